"""What vmctl does to a node's libvirt besides create and delete, one concern per module (each a
mixin of ``vmctl.adapters.hypervisor.LibvirtOverSsh`` over its Runner)."""
