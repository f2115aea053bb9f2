"""API tokens of the admin API: created by ``trustpub admin token create``, shown once, stored
only as a SHA-256 hash, expiring, revocable (DESIGN.md, "The admin API").

A token is ``tpadm_<id>_<secret>``: the id (32 hex digits) finds the row, the hash of the
whole token is compared in constant time. Scopes: ``admin`` (everything), ``read`` (every
read, no change), ``owner`` (the publishers of the listed projects, and nothing else).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from trustpub.providers.rules import RegistrationError, quote
from trustpub.registry.audit import insert_audit
from trustpub.registry.publishers import NotFound, normalize_name, parse_id

PREFIX = "tpadm_"
SCOPES = ("admin", "read", "owner")
MAX_DAYS = 366
_ID_HEX = 32
MAX_NAME = 100


@dataclass(frozen=True, slots=True)
class AdminToken:
    id: str
    name: str
    scope: str
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None
    projects: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Everything but the secret, which is never stored."""
        return {
            "id": self.id,
            "name": self.name,
            "scope": self.scope,
            "projects": self.projects,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "expires_at": self.expires_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }

    def actor(self) -> str:
        """Who acted, in audit rows: the token's name and id."""
        return f"token:{self.name} ({self.id})"


def _token(row: Mapping[str, Any]) -> AdminToken:
    return AdminToken(
        id=str(row["id"]),
        name=row["name"],
        scope=row["scope"],
        projects=list(row["projects"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def token_id(token: str) -> uuid.UUID | None:
    """The id a token carries, or None if it does not have a token's form."""
    if not token.startswith(PREFIX):
        return None
    rest = token[len(PREFIX) :]
    if len(rest) <= _ID_HEX + 1 or rest[_ID_HEX] != "_":
        return None
    try:
        return uuid.UUID(hex=rest[:_ID_HEX])
    except ValueError:
        return None


async def create_token(  # noqa: PLR0913  (one argument per column)
    conn: asyncpg.Connection,
    *,
    name: str,
    scope: str,
    projects: Sequence[str] = (),
    days: int,
    created_by: str = "",
) -> tuple[AdminToken, str]:
    """A new token and its secret (to be shown once); audited as ``admin.token.created``.

    Raises:
        RegistrationError: an unknown scope, projects with a scope other than owner (or none
            with it), an empty or long name, or a lifetime outside 1 to 366 days.
        NotFound: a listed project does not exist.
    """
    name = name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise RegistrationError(f"a token's name is 1 to {MAX_NAME} printable characters, got {quote(name)}")
    if scope not in SCOPES:
        raise RegistrationError(f"scope {quote(scope)} is not one of {', '.join(SCOPES)}")
    if (scope == "owner") != bool(projects):
        raise RegistrationError("scope owner takes the projects it owns (--project NAME); other scopes none")
    if not 1 <= days <= MAX_DAYS:
        raise RegistrationError(f"a token expires in 1 to {MAX_DAYS} days, got {days}")
    normalized = sorted({normalize_name(p) for p in projects})
    async with conn.transaction():
        found = await conn.fetch(
            "SELECT normalized_name FROM projects WHERE normalized_name = ANY($1::text[])", normalized
        )
        missing = sorted(set(normalized) - {r["normalized_name"] for r in found})
        if missing:
            raise NotFound(f"project {quote(missing[0])} does not exist")
        tid = uuid.uuid4()
        secret = f"{PREFIX}{tid.hex}_{secrets.token_urlsafe(32)}"
        row = await conn.fetchrow(
            "INSERT INTO admin_tokens (id, name, scope, projects, secret_hash, created_by, expires_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(days => $7)) RETURNING *",
            tid,
            name,
            scope,
            normalized,
            hash_token(secret),
            created_by,
            days,
        )
        token = _token(row)
        await insert_audit(
            conn,
            "admin.token.created",
            outcome="ok",
            detail={"token_id": token.id, "token_name": name, "scope": scope, "projects": normalized}
            | {"expires_at": token.expires_at.isoformat(), "by": created_by},
        )
    return token, secret


async def list_tokens(conn: asyncpg.Connection) -> list[AdminToken]:
    rows = await conn.fetch("SELECT * FROM admin_tokens ORDER BY created_at, id")
    return [_token(r) for r in rows]


async def revoke_token(conn: asyncpg.Connection, token: str, *, actor: str = "") -> AdminToken:
    """Revoke a token by its id (audited as ``admin.token.revoked``); idempotent.

    Raises:
        RegistrationError: not a UUID.
        NotFound: no such token.
    """
    tid = parse_id(token, "token id")
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE admin_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING *", tid
        )
        if row is None:
            raise NotFound(f"no API token with id {tid}")
        revoked = _token(row)
        await insert_audit(
            conn,
            "admin.token.revoked",
            outcome="ok",
            detail={"token_id": revoked.id, "token_name": revoked.name, "by": actor},
        )
    return revoked


class Refused(Exception):
    """The token is not one that may call the API now: 401."""


async def authenticate(conn: asyncpg.Connection, token: str) -> AdminToken:
    """The token's row, if the token is known, unrevoked and unexpired.

    Raises:
        Refused: it is not (the message says which, never echoing the token).
    """
    tid = token_id(token)
    if tid is None:
        raise Refused(f"an API token ({PREFIX}...) is required in Authorization: Bearer")
    row = await conn.fetchrow("SELECT *, expires_at <= now() AS expired FROM admin_tokens WHERE id = $1", tid)
    # The hash is compared even for an unknown id, so both take the same time.
    stored = row["secret_hash"] if row is not None else b"\0" * 32
    if not hmac.compare_digest(hash_token(token), bytes(stored)) or row is None:
        raise Refused("unknown API token")
    if row["revoked_at"] is not None:
        raise Refused("this API token was revoked")
    if row["expired"]:
        raise Refused("this API token has expired")
    return _token(row)
