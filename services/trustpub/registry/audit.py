"""The audit trail: the one place that writes audit rows (:func:`insert_audit`, and
:func:`insert_rows`, the statement every writer's SQL embeds), and its listing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from trustpub.providers.rules import (
    RegistrationError,
)

# --- writing ------------------------------------------------------------------------------

# The columns of an audit row (migration 0001); ``id`` is the table's own sequence.
AUDIT_COLUMNS = (
    "event_id",
    "at",
    "kind",
    "exchange_id",
    "publisher_id",
    "mint_id",
    "outcome",
    "code",
    "detail",
)


def insert_rows(columns: str, rows: str, *, idempotent: bool = True) -> str:
    """The statement that appends audit rows, for every writer: ``INSERT INTO audit_events
    (columns) rows``, and unless told otherwise ``ON CONFLICT (event_id) DO NOTHING`` (a row
    stored again, as a redelivered event is, is stored once). ``rows`` is a ``VALUES`` list or a
    ``SELECT``; a writer's data-modifying CTE embeds the statement (adding ``RETURNING``).

    Raises:
        ValueError: a column that audit rows do not have, or no ``event_id`` or ``kind``.
    """
    names = [c.strip() for c in columns.split(",")]
    unknown = [c for c in names if c not in AUDIT_COLUMNS]
    if unknown or "event_id" not in names or "kind" not in names:
        msg = f"audit rows have columns {', '.join(AUDIT_COLUMNS)} and need event_id and kind: got {columns}"
        raise ValueError(msg)
    conflict = "\nON CONFLICT (event_id) DO NOTHING" if idempotent else ""
    return f"INSERT INTO audit_events ({', '.join(names)})\n{rows}{conflict}"


INSERT_AUDIT = insert_rows(
    ", ".join(AUDIT_COLUMNS), "VALUES ($1, coalesce($2, now()), $3, $4, $5, $6, $7, $8, $9)"
)

# The last pin of a publisher's ids, for the message of a confirmation that is awaited.
_LAST_PIN = """
SELECT at, exchange_id FROM audit_events
WHERE publisher_id = $1 AND kind IN ('publisher.pinned', 'pending.pinned')
ORDER BY at DESC, id DESC LIMIT 1
"""


async def insert_audit(  # noqa: PLR0913  (one argument per column)
    conn: asyncpg.Connection,
    kind: str,
    *,
    exchange_id: str = "",
    publisher_id: str | uuid.UUID | None = None,
    mint_id: str | uuid.UUID | None = None,
    outcome: str = "",
    code: str = "",
    detail: Mapping[str, Any] | None = None,
    event_id: uuid.UUID | None = None,
    at: datetime | None = None,
) -> None:
    """Append one audit row (idempotent by ``event_id``, a fresh one by default)."""
    await conn.execute(
        INSERT_AUDIT,
        event_id or uuid.uuid4(),
        at,
        kind,
        exchange_id,
        _uuid_or_none(publisher_id),
        _uuid_or_none(mint_id),
        outcome,
        code,
        dict(detail or {}),
    )


async def last_pin(conn: asyncpg.Connection, publisher_id: uuid.UUID) -> tuple[datetime, str] | None:
    """When a publisher's ids were last pinned, and by which exchange; None if never."""
    row = await conn.fetchrow(_LAST_PIN, publisher_id)
    return None if row is None else (row["at"], row["exchange_id"])


def _uuid_or_none(value: str | uuid.UUID | None) -> uuid.UUID | None:
    if value is None or value == "":
        return None
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


# --- audit listing ------------------------------------------------------------------------

# Rows listed at most in one call: the trail can be millions of rows.
MAX_AUDIT_LIST = 10_000


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One row of the audit trail. ``detail`` never holds a token: at most a prefix of its hash."""

    id: int
    at: datetime
    kind: str
    outcome: str
    code: str
    exchange_id: str
    publisher_id: str
    mint_id: str
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "kind": self.kind,
            "outcome": self.outcome,
            "code": self.code,
            "exchange_id": self.exchange_id,
            "publisher_id": self.publisher_id or None,
            "mint_id": self.mint_id or None,
            "issuer": self.detail.get("issuer", ""),
            "provider": self.detail.get("provider", ""),
            "reason": self.detail.get("description", ""),
            "token_hash_prefix": self.detail.get("token_hash_prefix", ""),
            "detail": self.detail,
        }


_LIST_AUDIT = """
SELECT id, at, kind, outcome, code, exchange_id, publisher_id, mint_id, detail
FROM audit_events
WHERE ($1::text IS NULL OR kind = $1)
  AND ($2::text IS NULL OR code = $2)
  AND ($3::timestamptz IS NULL OR at >= $3)
  AND ($4::text IS NULL OR exchange_id = $4)
ORDER BY at DESC, id DESC
LIMIT $5
"""


async def list_audit_events(  # noqa: PLR0913  (one argument per filter)
    conn: asyncpg.Connection,
    *,
    kind: str | None = None,
    code: str | None = None,
    since: datetime | None = None,
    exchange_id: str | None = None,
    limit: int = 50,
) -> list[AuditEvent]:
    """The newest audit rows first, filtered by kind, code, time and exchange id.

    Raises:
        RegistrationError: ``limit`` is not between 1 and :data:`MAX_AUDIT_LIST`.
    """
    if not 1 <= limit <= MAX_AUDIT_LIST:
        raise RegistrationError(f"limit must be between 1 and {MAX_AUDIT_LIST}, got {limit}")
    rows = await conn.fetch(_LIST_AUDIT, kind, code, since, exchange_id, limit)
    return [
        AuditEvent(
            id=int(r["id"]),
            at=r["at"],
            kind=r["kind"],
            outcome=r["outcome"],
            code=r["code"],
            exchange_id=r["exchange_id"],
            publisher_id=str(r["publisher_id"] or ""),
            mint_id=str(r["mint_id"] or ""),
            detail=dict(r["detail"] or {}),
        )
        for r in rows
    ]
