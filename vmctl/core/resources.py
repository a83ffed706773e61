"""Files vmctl ships beside its code: cloud-init templates and the node scripts.

They live at the top of the repository (templates/cloud-init/, scripts/). A wheel carries copies
inside the package, under vmctl/_shipped/ (setup.py's build_py): those come first; without them
(a checkout, the editable install) the repository's own folders are used."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent
_SHIPPED = _PACKAGE / "_shipped"
_ROOT = _PACKAGE.parent


def _find(relative: str) -> Path:
    """The shipped copy of a folder if the package has one, else the repository's."""
    shipped = _SHIPPED / relative
    return shipped if shipped.is_dir() else _ROOT / relative


def templates_dir() -> Path:
    override = os.environ.get("VMCTL_TEMPLATES_DIR")
    return Path(override) if override else _find("templates/cloud-init")


def scripts_dir() -> Path:
    return _find("scripts")


def node_script(name: str) -> str:
    """The text of a script from scripts/, ready for `bash -c`: the helpers of scripts/lib/ go
    ahead of it (function definitions only), since nothing of vmctl is installed on nodes."""
    scripts = scripts_dir()
    helpers = "".join(path.read_text() + "\n" for path in sorted((scripts / "lib").glob("*.sh")))
    return helpers + (scripts / name).read_text()
