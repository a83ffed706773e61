#!/bin/sh
# Ansible's inventory from vmctl's inventory.yaml, so hosts are listed once:
#   ansible-playbook -i deploy/ansible/inventory/vmctl.sh site.yml
# Ansible runs it with --list (or --host NAME); it runs `vmctl ansible-inventory` with the same
# arguments, and vmctl reads the inventory it always reads: $VMCTL_INVENTORY, else `inventory` in
# the config file ($VMCTL_CONFIG, else ~/.config/vmctl/config.toml), else ./inventory.yaml in the
# directory Ansible runs from. vmctl is found on PATH (docs/inventory.md, "Ansible").
command -v vmctl >/dev/null 2>&1 || {
  echo "vmctl.sh: vmctl is not on PATH (install vmctl, or put its virtualenv's bin on PATH)" >&2
  exit 127
}
exec vmctl ansible-inventory "$@"
