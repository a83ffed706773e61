"""The snapshots of each VM's disks (schema 0004): removed with the VM (ON DELETE CASCADE)."""

from __future__ import annotations

from typing import Any

import psycopg

from vmctl.adapters.store.base import StoreBase, _gone, utc
from vmctl.core.errors import Conflict, InvalidInput, NotFound
from vmctl.core.snapshots import Snapshot

_COLUMNS = "v.name AS vm, s.name, s.vm_state, s.quiesced, s.created_at, s.actor"


def _snapshot(row: dict[str, Any]) -> Snapshot:
    return Snapshot(**{**row, "created_at": utc(row["created_at"])})


class SnapshotsMixin(StoreBase):
    def add_snapshot(self, vm: str, name: str, vm_state: str, quiesced: bool) -> Snapshot:
        """Record snapshot ``name`` of VM ``vm`` (the actor is this store's). NotFound without
        such a VM, Conflict when it has a snapshot of that name already."""
        try:
            row = self._run(
                lambda c: c.execute(
                    f"""WITH s AS (
                           INSERT INTO snapshots (vm_id, name, vm_state, quiesced, actor)
                           SELECT id, %s, %s, %s, %s FROM vms WHERE name = %s
                           RETURNING *)
                       SELECT {_COLUMNS} FROM s JOIN vms v ON v.id = s.vm_id""",
                    (name, vm_state, quiesced, self.actor, vm),
                ).fetchone(),
                # an unknown outcome: the snapshot there means this call recorded it (the caller
                # holds the VM's lock), not that the name was taken
                lambda c: c.execute(
                    f"""SELECT {_COLUMNS} FROM snapshots s JOIN vms v ON v.id = s.vm_id
                        WHERE v.name = %s AND s.name = %s AND s.actor = %s""",
                    (vm, name, self.actor),
                ).fetchone(),
            )
        except psycopg.errors.UniqueViolation as e:
            raise Conflict(f"{vm} has a snapshot named {name} already") from e
        except psycopg.errors.CheckViolation as e:
            raise InvalidInput("snapshot", "not accepted by the database") from e
        if row is None:
            raise NotFound(f"no VM named {vm}")
        return _snapshot(row)

    def snapshot_names(self) -> dict[str, list[str]]:
        """Every VM's snapshot names, oldest first, in one query (VMs without any left out)."""
        rows = self._run(
            lambda c: c.execute(
                """SELECT v.name AS vm, array_agg(s.name ORDER BY s.created_at, s.id) AS names
                   FROM snapshots s JOIN vms v ON v.id = s.vm_id GROUP BY v.name"""
            ).fetchall()
        )
        return {row["vm"]: list(row["names"]) for row in rows}

    def snapshots(self, vm: str) -> list[Snapshot]:
        """VM ``vm``'s snapshots, oldest first (none for an unknown VM)."""
        rows = self._run(
            lambda c: c.execute(
                f"""SELECT {_COLUMNS} FROM snapshots s JOIN vms v ON v.id = s.vm_id
                    WHERE v.name = %s ORDER BY s.created_at, s.id""",
                (vm,),
            ).fetchall()
        )
        return [_snapshot(row) for row in rows]

    def get_snapshot(self, vm: str, name: str) -> Snapshot:
        """NotFound if VM ``vm`` has no snapshot ``name``."""
        row = self._run(
            lambda c: c.execute(
                f"""SELECT {_COLUMNS} FROM snapshots s JOIN vms v ON v.id = s.vm_id
                    WHERE v.name = %s AND s.name = %s""",
                (vm, name),
            ).fetchone()
        )
        if row is None:
            raise NotFound(f"{vm} has no snapshot named {name}")
        return _snapshot(row)

    def delete_snapshot(self, vm: str, name: str) -> bool:
        """Forget snapshot ``name`` of VM ``vm``; whether there was one."""
        row = self._run(
            lambda c: c.execute(
                """DELETE FROM snapshots s USING vms v
                   WHERE v.id = s.vm_id AND v.name = %s AND s.name = %s RETURNING s.id""",
                (vm, name),
            ).fetchone(),
            _gone(
                "SELECT 1 FROM snapshots s JOIN vms v ON v.id = s.vm_id "
                "WHERE v.name = %s AND s.name = %s",
                (vm, name),
            ),
        )
        return row is not None
