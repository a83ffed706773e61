"""The base images `vmctl images import` put in each location (schema 0005)."""

from __future__ import annotations

from typing import Any

import psycopg

from vmctl.adapters.store.base import StoreBase, _gone, utc
from vmctl.core.errors import InvalidInput
from vmctl.core.images import ImageRecord

_COLUMNS = "name, location, sha256, size_bytes, imported_at, imported_by"


def _record(row: dict[str, Any]) -> ImageRecord:
    return ImageRecord(**{**row, "imported_at": utc(row["imported_at"])})


class ImagesMixin(StoreBase):
    def record_image(self, name: str, location: str, sha256: str, size_bytes: int) -> ImageRecord:
        """Record an import of image ``name`` into ``location`` (now, by this store's actor),
        replacing the record of an earlier one."""
        try:
            row = self._run(
                lambda c: c.execute(
                    f"""INSERT INTO images (name, location, sha256, size_bytes, imported_by)
                        VALUES (%s, %s, %s, %s, %s)
                        ON CONFLICT (name, location) DO UPDATE SET
                            sha256 = excluded.sha256, size_bytes = excluded.size_bytes,
                            imported_at = now(), imported_by = excluded.imported_by
                        RETURNING {_COLUMNS}""",
                    (name, location, sha256, size_bytes, self.actor),
                ).fetchone()
            )
        except psycopg.errors.CheckViolation as e:
            raise InvalidInput("image", "not accepted by the database") from e
        assert row is not None
        return _record(row)

    def image_records(self) -> list[ImageRecord]:
        """Every recorded import, by image and location."""
        rows = self._run(
            lambda c: c.execute(f"SELECT {_COLUMNS} FROM images ORDER BY name, location").fetchall()
        )
        return [_record(row) for row in rows]

    def forget_image(self, name: str, location: str) -> bool:
        """Drop the record of image ``name`` in ``location``; whether there was one."""
        row = self._run(
            lambda c: c.execute(
                "DELETE FROM images WHERE name = %s AND location = %s RETURNING name",
                (name, location),
            ).fetchone(),
            _gone("SELECT 1 FROM images WHERE name = %s AND location = %s", (name, location)),
        )
        return row is not None
