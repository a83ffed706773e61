"""The one thing pyproject.toml cannot say: the wheel carries templates/ and scripts/.

They stay at the top of the repository (the layout of the project's brief); a wheel built from it
(`pip wheel --no-deps .`, `python -m build`) holds copies as `vmctl/_shipped/templates/...` and
`vmctl/_shipped/scripts/...`, which `vmctl.core.resources` looks for first. Everything else is
configured in pyproject.toml. The sdist carries both folders too (MANIFEST.in), so a wheel built
from it (what `python -m build` does) is the same.
"""

from __future__ import annotations

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED = ("templates", "scripts")  # top-level folders, copied whole
TARGET = os.path.join("vmctl", "_shipped")


def _shipped_files() -> list[str]:
    """Every file of the shipped folders, relative to the project (sorted, no caches)."""
    files = []
    for top in SHIPPED:
        for dirpath, dirnames, filenames in os.walk(os.path.join(HERE, top)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and d[0] != ".")
            for name in sorted(filenames):
                if name[0] != "." and not name.endswith((".pyc", "~")):
                    files.append(os.path.relpath(os.path.join(dirpath, name), HERE))
    return files


class build_py_shipped(build_py):
    """build_py that also copies templates/ and scripts/ into the built package, modes kept
    (the node scripts are executable). An editable install copies nothing: vmctl finds the
    repository's folders there (setuptools' SubCommand protocol: `editable_mode` returns early,
    `get_output_mapping` still says where the files would go)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        # A build/ left by an earlier build could hold a file removed since: start afresh.
        shutil.rmtree(os.path.join(self.build_lib, TARGET), ignore_errors=True)
        for target, source in self._shipped_mapping().items():
            self.mkpath(os.path.dirname(target))
            self.copy_file(source, target, preserve_mode=True)

    def _shipped_mapping(self) -> dict[str, str]:
        return {
            os.path.join(self.build_lib, TARGET, path): os.path.join(HERE, path)
            for path in _shipped_files()
        }

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:  # super() answered from get_output_mapping() already
            return outputs
        return [*outputs, *self._shipped_mapping()]

    def get_output_mapping(self) -> dict[str, str]:
        return {**super().get_output_mapping(), **self._shipped_mapping()}

    def get_source_files(self) -> list[str]:
        return [*super().get_source_files(), *_shipped_files()]


setup(cmdclass={"build_py": build_py_shipped})
