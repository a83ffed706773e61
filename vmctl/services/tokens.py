"""API bearer tokens: made, listed, revoked, and checked for the HTTP API (one project each)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmctl.core import tokens, validation
from vmctl.core.errors import Unauthenticated
from vmctl.services.ports import TokenStore


@dataclass
class TokenService:
    store: TokenStore

    def create(self, project: str, note: str = "") -> tuple[int, str]:
        """A new token for ``project``: its id and the token (shown once; only a hash is kept)."""
        validation.name(project, "project")
        token, digest = tokens.new_secret(tokens.TOKEN_PREFIX)
        return self.store.create_token(project, digest, note), token

    def list(self) -> list[dict[str, Any]]:
        return self.store.tokens()

    def revoke(self, token_id: int) -> None:
        self.store.revoke_token(token_id)

    def project_of(self, token: str | None) -> str:
        """The project of a bearer token; Unauthenticated without a valid one."""
        if not token or not token.strip():
            raise Unauthenticated("a bearer token is needed (Authorization: Bearer TOKEN)")
        project = self.store.token_project(tokens.digest(token.strip()))
        if project is None:
            raise Unauthenticated("the token is not valid (unknown or revoked)")
        return project
