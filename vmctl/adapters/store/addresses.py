"""The addresses VMs were seen at: the watcher's findings and the VMs' calls home."""

from __future__ import annotations

import hmac
import ipaddress

from psycopg.types.json import Jsonb

from vmctl.adapters.store.base import Connection, StoreBase, utc
from vmctl.core.errors import Forbidden, NotFound
from vmctl.core.records import IpChange


class AddressesMixin(StoreBase):
    def record_ip(self, name: str, mac: str, ip: str, source: str) -> IpChange | None:
        """The watcher saw ``ip`` for the VM ``name`` with ``mac``: confirm it, with an event.

        None when nothing changed (already confirmed at that address) or when there is no such
        VM any more (deleted, or deleted and made again with another MAC, while it was watched).
        Idempotent: run again after a failover left its COMMIT's outcome unknown, it finds the
        address confirmed already and says None (the change and its event were recorded once).
        """
        return self._run(lambda conn: self._record_ip(conn, name, mac, ip, source))

    def record_phone_home(self, name: str, secret_hash: str, ip: str) -> IpChange | None:
        """The VM ``name`` called home from ``ip`` with the secret whose hash is given: use the
        secret up (it works once) and record the address. Forbidden if the secret is not the
        VM's (or was used already), NotFound if there is no such VM."""

        def work(conn: Connection) -> tuple[IpChange | None]:
            row = conn.execute(
                "SELECT mac, phone_home_hash FROM vms WHERE name = %s FOR UPDATE", (name,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no VM named {name}")
            stored = row["phone_home_hash"]
            if stored is None or not hmac.compare_digest(stored, secret_hash):
                raise Forbidden(f"{name}: not its phone-home secret (or it was used already)")
            conn.execute("UPDATE vms SET phone_home_hash = NULL WHERE name = %s", (name,))
            return (self._record_ip(conn, name, row["mac"], ip, "phone-home"),)

        def confirm(conn: Connection) -> tuple[IpChange | None] | None:
            # an unknown outcome: the secret used up and the address recorded means this call
            # did it (the secret works once), not that the secret is wrong
            row = conn.execute(
                """SELECT 1 FROM vms WHERE name = %s AND phone_home_hash IS NULL
                   AND ip = %s AND ip_state = 'confirmed'""",
                (name, ipaddress.ip_address(ip)),
            ).fetchone()
            return None if row is None else (None,)

        return self._run(work, confirm)[0]

    def _record_ip(
        self, conn: Connection, name: str, mac: str, ip: str, source: str
    ) -> IpChange | None:
        address = ipaddress.ip_address(ip)
        row = conn.execute(
            "SELECT node, ip, ip_state FROM vms WHERE name = %s AND mac = %s FOR UPDATE",
            (name, mac),
        ).fetchone()
        if row is None or (row["ip"] == address and row["ip_state"] == "confirmed"):
            return None
        previous = None if row["ip"] is None else str(row["ip"])
        now = conn.execute(
            """UPDATE vms SET ip = %s, ip_state = 'confirmed', updated_at = now()
               WHERE name = %s RETURNING updated_at""",
            (address, name),
        ).fetchone()
        assert now is not None
        detail = {"ip": ip, "previous": previous, "previous_state": row["ip_state"]}
        conn.execute(
            """INSERT INTO events (vm, node, actor, action, result, detail)
               VALUES (%s, %s, %s, 'ip', 'ok', %s)""",
            (name, row["node"], self.actor, Jsonb({**detail, "source": source})),
        )
        return IpChange(
            name=name,
            node=row["node"],
            ip=ip,
            previous=previous,
            previous_state=row["ip_state"],
            source=source,
            at=utc(now["updated_at"]),
        )
