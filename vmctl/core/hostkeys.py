"""SSH keys made by vmctl: guest host keys (so first contact is verified) and known_hosts lines.

cryptography is imported when a key is made, not when this module is imported.
"""

from __future__ import annotations

import secrets

from vmctl.core.cloudinit import HostKey


def new_host_key(comment: str) -> HostKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return HostKey(private=private, public=f"{public} {comment}")


def key_blob(public_key: str) -> str:
    """ "TYPE BASE64" of an OpenSSH public key line: what a server presents, without the comment."""
    return " ".join(public_key.split()[:2])


def known_hosts_line(alias: str, public_key: str) -> str:
    """A known_hosts entry for `ssh -o HostKeyAlias=ALIAS` (independent of the guest's IP)."""
    return f"{alias} {key_blob(public_key)}"


def new_mac() -> str:
    """A random MAC in the locally administered range QEMU/KVM uses (52:54:00:xx:xx:xx)."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
