"""vmctl: run a small private cloud of KVM hosts over SSH."""

__version__ = "0.1.0"
