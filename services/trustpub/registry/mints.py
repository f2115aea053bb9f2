"""The mint records after their exchange: revocation (``mint.revoke``, and the admin API's)
and introspection (``mint.status``). The records are written by ``exchange.py``; their
delivery is applied by the audit consumer (``app.py``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import structlog

from trustpub.messages import InvalidToken
from trustpub.messages.v1 import MintStatus, MintStatusRequest, RevokeRequest
from trustpub.registry import audit
from trustpub.registry.metrics import RegistryMetrics
from trustpub.registry.pool import Database

log = structlog.get_logger("trustpub.registry")

MAX_REASON = 200

# Revoke once, audited as ``mint.revoked`` with the reason (and who, through the admin API).
_REVOKED_AUDIT = audit.insert_rows(
    "event_id, kind, exchange_id, publisher_id, mint_id, outcome, detail",
    """SELECT $3::uuid, 'mint.revoked', upd.exchange_id, upd.publisher_id, upd.id, 'ok',
           jsonb_strip_nulls(jsonb_build_object('reason', $2::text, 'by', $4::text))
    FROM upd""",
    idempotent=False,
)
_REVOKE = f"""
WITH m AS (
    SELECT expires_at FROM mints WHERE id = $1
), upd AS (
    UPDATE mints SET revoked_at = now(), revoked_reason = $2
    WHERE id = $1 AND revoked_at IS NULL
    RETURNING id, publisher_id, exchange_id
), audit AS (
    {_REVOKED_AUDIT}
    RETURNING 1
)
SELECT m.expires_at, (SELECT count(*) FROM audit) AS revoked_now FROM m
"""  # noqa: S608  (constant SQL)

# A token whose publisher was removed is reported revoked: removal revokes at introspection.
_STATUS = """
SELECT m.expires_at, m.revoked_at, p.id IS NULL AS publisher_gone, m.publisher_id, m.projects
FROM mints m LEFT JOIN publishers p ON p.id = m.publisher_id
WHERE m.id = $1
"""


def _parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def revoke_mint(
    conn: asyncpg.Connection, mint_id: uuid.UUID, reason: str, *, by: str | None = None
) -> asyncpg.Record | None:
    """Revoke a mint record once; its ``expires_at`` and whether it was revoked now (None: no
    such record)."""
    row: asyncpg.Record | None = await conn.fetchrow(_REVOKE, mint_id, reason, uuid.uuid4(), by)
    return row


@dataclass
class Mints:
    """The handlers of ``mint.revoke`` and ``mint.status``."""

    db: Database
    metrics: RegistryMetrics

    async def revoke(self, req: RevokeRequest) -> MintStatus:
        """Revoke a minted token once (audited as ``mint.revoked``); idempotent.

        Raises:
            InvalidToken: no mint record has this id.
            Unavailable: the database did not answer.
        """
        mint_id = _parse_uuid(req.mint_id)
        if mint_id is None:
            raise InvalidToken("unknown token")
        async with self.db.connection() as conn:
            row = await revoke_mint(conn, mint_id, req.reason[:MAX_REASON])
        if row is None:
            raise InvalidToken("unknown token")
        if row["revoked_now"]:
            self.metrics.audited("mint.revoked")
            log.info("mint_revoked", mint_id=str(mint_id))
        return MintStatus(
            mint_id=str(mint_id), known=True, revoked=True, expires_at=int(row["expires_at"].timestamp())
        )

    async def status(self, req: MintStatusRequest) -> MintStatus:
        """Whether a minted token is known, and revoked (explicitly, or its publisher removed).

        Raises:
            Unavailable: the database did not answer.
        """
        mint_id = _parse_uuid(req.mint_id)
        if mint_id is None:
            return MintStatus(mint_id=req.mint_id, known=False)
        async with self.db.connection() as conn:
            row = await conn.fetchrow(_STATUS, mint_id)
        if row is None:
            return MintStatus(mint_id=req.mint_id, known=False)
        return MintStatus(
            mint_id=str(mint_id),
            known=True,
            revoked=row["revoked_at"] is not None or bool(row["publisher_gone"]),
            expires_at=int(row["expires_at"].timestamp()),
            publisher_id=str(row["publisher_id"]) if row["publisher_id"] is not None else "",
            projects=list(row["projects"] or []),
        )
