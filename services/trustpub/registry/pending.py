"""Pending publishers: a publisher registered for a project that does not exist yet, whose
first exchange creates it (``exchange.py`` converts it); adding, listing, removing and the purge
of expired ones.
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
    quote,
)
from trustpub.registry.audit import insert_audit
from trustpub.registry.publishers import NewPublisher, NotFound, check_project_name, normalize_name, parse_id

# --- pending publishers -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingPublisher:
    """A publisher registered for a project that does not exist yet."""

    id: str
    provider: str
    issuer: str
    spec: dict[str, Any]
    environment: str
    project_name: str
    registrant: str
    created_at: datetime
    expires_at: datetime
    # Converts nothing until an operator confirms its owner's id (``trustpub publisher confirm``).
    needs_confirmation: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "provider": self.provider,
            "issuer": self.issuer,
            "spec": self.spec,
            "environment": self.environment,
            "pending_project": self.project_name,
            "registrant": self.registrant,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "needs_confirmation": self.needs_confirmation,
        }


def pending_from_row(row: Mapping[str, Any]) -> PendingPublisher:
    return PendingPublisher(
        id=str(row["id"]),
        provider=row["provider"],
        issuer=row["issuer"],
        spec=dict(row["spec"]),
        environment=row["environment"],
        project_name=row["project_name"],
        registrant=row["registrant"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        needs_confirmation=row["needs_confirmation"],
    )


async def add_pending_publisher(
    conn: asyncpg.Connection,
    new: NewPublisher,
    project_name: str,
    *,
    ttl_days: int,
    max_per_registrant: int,
) -> PendingPublisher:
    """Register a pending publisher for a project that does not exist yet (audited as
    ``pending.created``). It expires ``ttl_days`` after now.

    Raises:
        RegistrationError: no registrant, an invalid name, the project exists already, the
            registrant holds ``max_per_registrant`` unexpired pending publishers, or the
            identity is pending already.
    """
    registrant = new.registrant.strip()
    if not registrant:
        raise RegistrationError("a pending publisher needs its registrant (--registrant WHO)")
    name = check_project_name(project_name)
    normalized = normalize_name(name)
    async with conn.transaction():
        # Serialises registrations by one registrant, so that two at once cannot both pass
        # the limit check below.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", registrant)
        existing = await conn.fetchval("SELECT name FROM projects WHERE normalized_name = $1", normalized)
        if existing is not None:
            raise RegistrationError(
                f"project {quote(existing)} exists already; register a normal publisher for it "
                f"(--project {existing}) instead of a pending one"
            )
        held = await conn.fetchval(
            "SELECT count(*) FROM pending_publishers WHERE registrant = $1 AND expires_at > now()", registrant
        )
        if held >= max_per_registrant:
            raise RegistrationError(
                f"registrant {quote(registrant)} holds {held} pending publishers already, the limit "
                f"(TRUSTPUB_MAX_PENDING_PER_REGISTRANT={max_per_registrant}); remove one, or wait until "
                "one is used or expires"
            )
        row = await conn.fetchrow(
            "INSERT INTO pending_publishers (provider, issuer, lookup_key, unique_key, spec, environment, "
            "project_name, normalized_name, registrant, expires_at, needs_confirmation) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(days => $10), $11) "
            "ON CONFLICT (unique_key) DO NOTHING RETURNING *",
            new.provider,
            new.issuer,
            new.lookup_key,
            new.unique_key,
            new.spec,
            str(new.spec.get("environment") or ""),
            name,
            normalized,
            registrant,
            ttl_days,
            new.needs_confirmation,
        )
        if row is None:
            other = await conn.fetchval(
                "SELECT project_name FROM pending_publishers WHERE unique_key = $1", new.unique_key
            )
            raise RegistrationError(
                f"this publisher is pending already for project {quote(other)}; one identity can be "
                "pending for one project at a time (remove that one first)"
            )
        pending = pending_from_row(row)
        await insert_audit(
            conn,
            "pending.created",
            publisher_id=row["id"],
            outcome="ok",
            detail={
                "provider": new.provider,
                "issuer": new.issuer,
                "spec": pending.spec,
                "project": name,
                "expires_at": pending.expires_at.isoformat(),
                "needs_confirmation": pending.needs_confirmation,
                "by": registrant,
            },
        )
    return pending


async def list_pending_publishers(conn: asyncpg.Connection) -> list[PendingPublisher]:
    """Every pending publisher (expired ones too, until the purge), oldest first."""
    rows = await conn.fetch("SELECT * FROM pending_publishers ORDER BY created_at, id")
    return [pending_from_row(r) for r in rows]


async def remove_pending_publisher(
    conn: asyncpg.Connection, publisher_id: str, *, actor: str = ""
) -> PendingPublisher:
    """Delete a pending publisher (audited as ``pending.removed``).

    Raises:
        RegistrationError: the id is not a UUID.
        NotFound: no such pending publisher.
    """
    pid = parse_id(publisher_id)
    async with conn.transaction():
        row = await conn.fetchrow("DELETE FROM pending_publishers WHERE id = $1 RETURNING *", pid)
        if row is None:
            raise NotFound(f"no publisher with id {pid}")
        pending = pending_from_row(row)
        await insert_audit(
            conn,
            "pending.removed",
            publisher_id=pid,
            outcome="ok",
            detail={"project": pending.project_name, "spec": pending.spec, "by": actor},
        )
    return pending


async def purge_expired_pending(conn: asyncpg.Connection) -> list[PendingPublisher]:
    """Delete pending publishers past their expiry, each audited as ``pending.expired``.

    They are never matched once expired (the exchange compares ``expires_at`` itself); this
    only removes the rows.
    """
    async with conn.transaction():
        rows = await conn.fetch("DELETE FROM pending_publishers WHERE expires_at <= now() RETURNING *")
        removed = [pending_from_row(r) for r in rows]
        for p in removed:
            await insert_audit(
                conn,
                "pending.expired",
                publisher_id=p.id,
                outcome="removed",
                detail={
                    "provider": p.provider,
                    "issuer": p.issuer,
                    "project": p.project_name,
                    "registrant": p.registrant,
                    "expires_at": p.expires_at.isoformat(),
                    "by": "system:ttl-expired",
                },
            )
    return removed


async def get_pending(conn: asyncpg.Connection, pid: uuid.UUID) -> PendingPublisher:
    """Raises NotFound."""
    row = await conn.fetchrow("SELECT * FROM pending_publishers WHERE id = $1", pid)
    if row is None:
        raise NotFound(f"no publisher with id {pid}")
    return pending_from_row(row)
