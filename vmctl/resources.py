"""Files vmctl ships beside its package: cloud-init templates and the node scripts."""

from __future__ import annotations

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def templates_dir() -> Path:
    return Path(os.environ.get("VMCTL_TEMPLATES_DIR", _ROOT / "templates" / "cloud-init"))


def node_script(name: str) -> str:
    """The text of a script from scripts/ (sent to nodes over SSH on stdin)."""
    return (_ROOT / "scripts" / name).read_text()
