"""What the cloud's metrics read (`vmctl serve`'s /metrics/cloud): counts by node and state, and
the creates and deletes of the event log with their durations, in three statements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vmctl.adapters.store.base import Connection, StoreBase
from vmctl.core.records import CloudFigures, OperationFigures

_VMS_SQL = """
SELECT node, state, count(*) AS vms,
       count(*) FILTER (WHERE state IN ('creating', 'running')
                          AND ip_state IS DISTINCT FROM 'confirmed') AS waiting
FROM vms GROUP BY node, state"""

# Events of creates and deletes that ended; ``seconds`` is in the detail of those that timed it.
_OPERATIONS_SQL = """
SELECT action, result, count(*) AS n, count(s) AS timed, coalesce(sum(s), 0) AS total{buckets}
FROM (SELECT action, result, (detail->>'seconds')::float8 AS s FROM events
      WHERE action IN ('create', 'delete') AND result IN ('ok', 'failed')) e
GROUP BY action, result"""

_ROLLBACKS_SQL = """
SELECT count(*) FILTER (WHERE problems = 0) AS clean,
       count(*) FILTER (WHERE problems > 0) AS incomplete
FROM (SELECT jsonb_array_length(coalesce(detail->'cleanup_problems', '[]'::jsonb)) AS problems
      FROM events WHERE action = 'create' AND result = 'failed') f"""


class MetricsMixin(StoreBase):
    def cloud_figures(self, bounds_s: Sequence[float]) -> CloudFigures:
        """Counts for the cloud's metrics; durations counted against ``bounds_s``."""
        bounds = tuple(float(b) for b in bounds_s)
        columns = "".join(
            f", count(*) FILTER (WHERE s <= %(b{i})s) AS b{i}" for i in range(len(bounds))
        )
        params = {f"b{i}": b for i, b in enumerate(bounds)}

        def read(conn: Connection) -> tuple[list[Any], list[Any], Any]:
            vms = conn.execute(_VMS_SQL).fetchall()
            ops = conn.execute(_OPERATIONS_SQL.format(buckets=columns), params).fetchall()
            rollbacks = conn.execute(_ROLLBACKS_SQL).fetchone()
            return vms, ops, rollbacks

        vms, ops, rollbacks = self._run(read)
        waiting: dict[str, int] = {}
        for row in vms:
            waiting[row["node"]] = waiting.get(row["node"], 0) + int(row["waiting"])
        return CloudFigures(
            vms={(row["node"], row["state"]): int(row["vms"]) for row in vms},
            waiting=waiting,
            operations=[
                OperationFigures(
                    action=row["action"],
                    result=row["result"],
                    count=int(row["n"]),
                    timed=int(row["timed"]),
                    seconds=float(row["total"]),
                    bounds_s=bounds,
                    at_most=tuple(int(row[f"b{i}"]) for i in range(len(bounds))),
                )
                for row in ops
            ],
            rollbacks={
                "clean": int(rollbacks["clean"]) if rollbacks else 0,
                "incomplete": int(rollbacks["incomplete"]) if rollbacks else 0,
            },
        )
