"""API tokens: only their hashes are stored, each token belongs to one project."""

from __future__ import annotations

from typing import Any

from vmctl.adapters.store.base import StoreBase
from vmctl.core.errors import NotFound


class TokensMixin(StoreBase):
    def create_token(self, project: str, token_hash: str, name: str = "") -> int:
        row = self._run(
            lambda c: c.execute(
                "INSERT INTO api_tokens (project, name, token_hash) VALUES (%s, %s, %s) "
                "RETURNING id",
                (project, name, token_hash),
            ).fetchone(),
            # an unknown outcome: the hash is unique and made by the caller, so a row with it
            # is this call's
            lambda c: c.execute(
                "SELECT id FROM api_tokens WHERE token_hash = %s", (token_hash,)
            ).fetchone(),
        )
        assert row is not None
        return int(row["id"])

    def token_project(self, token_hash: str) -> str | None:
        """The project of the token with this hash; None if there is none or it was revoked."""
        row = self._run(
            lambda c: c.execute(
                "SELECT project FROM api_tokens WHERE token_hash = %s AND revoked_at IS NULL",
                (token_hash,),
            ).fetchone()
        )
        return None if row is None else str(row["project"])

    def tokens(self) -> list[dict[str, Any]]:
        rows = self._run(
            lambda c: c.execute(
                "SELECT id, project, name, created_at, revoked_at FROM api_tokens ORDER BY id"
            ).fetchall()
        )
        return [dict(row) for row in rows]

    def revoke_token(self, token_id: int) -> None:
        row = self._run(
            lambda c: c.execute(
                "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s "
                "RETURNING id",
                (token_id,),
            ).fetchone()
        )
        if row is None:
            raise NotFound(f"no API token with id {token_id}")
