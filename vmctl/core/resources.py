"""Files vmctl ships beside its package: cloud-init templates and the node scripts."""

from __future__ import annotations

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent.parent


def templates_dir() -> Path:
    return Path(os.environ.get("VMCTL_TEMPLATES_DIR", _ROOT / "templates" / "cloud-init"))


def node_script(name: str) -> str:
    """The text of a script from scripts/, ready for `bash -c`: the helpers of scripts/lib/ go
    ahead of it (function definitions only), since nothing of vmctl is installed on nodes."""
    scripts = _ROOT / "scripts"
    helpers = "".join(path.read_text() + "\n" for path in sorted((scripts / "lib").glob("*.sh")))
    return helpers + (scripts / name).read_text()
