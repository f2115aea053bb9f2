"""Confirming an owner's id: a publisher (or pending one) registered without it mints only once
an operator confirmed the id its first token pinned (DESIGN.md, "Owners are confirmed").
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from trustpub.providers import PROVIDERS
from trustpub.providers.rules import (
    RegistrationError,
    quote,
)
from trustpub.registry.audit import insert_audit, last_pin
from trustpub.registry.pending import PendingPublisher, get_pending
from trustpub.registry.publishers import NotFound, Publisher, get_publisher, parse_id

# --- confirming an owner's id ------------------------------------------------------------

# GitHub and GitLab ids are positive integers, given as decimal strings.
_NUMERIC_ID = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True, slots=True)
class Confirmation:
    """What ``confirm_publisher`` found or did."""

    publisher: Publisher | PendingPublisher
    field: str  # the spec field of the owner's id ("owner_id", "namespace_id"); "" for none
    value: str  # the confirmed id
    confirmed_now: bool  # False: it needed no confirmation


_OWNER_COLUMNS = "id, provider, spec, needs_confirmation, registrant"
_LOCK_PUBLISHER = f"SELECT {_OWNER_COLUMNS} FROM publishers WHERE id = $1 FOR UPDATE"  # noqa: S608  (constant SQL)
_LOCK_PENDING = f"SELECT {_OWNER_COLUMNS} FROM pending_publishers WHERE id = $1 FOR UPDATE"  # noqa: S608  (constant SQL)
_CONFIRMED = "needs_confirmation = false, spec = spec || $2::jsonb"
_CONFIRM_PUBLISHER = f"UPDATE publishers SET {_CONFIRMED} WHERE id = $1"  # noqa: S608  (constant SQL)
_CONFIRM_PENDING = f"UPDATE pending_publishers SET {_CONFIRMED} WHERE id = $1"  # noqa: S608  (constant SQL)


def _owner_name(provider: str) -> str:
    """The spec field that names the owner whose id is confirmed."""
    found = PROVIDERS.get(provider)
    return found.owner_name_field if found is not None else "owner"


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


async def confirm_publisher(
    conn: asyncpg.Connection, publisher_id: str, ids: Mapping[str, str], *, actor: str = ""
) -> Confirmation:
    """Confirm the owner's id of a publisher (or pending one) registered without it, so that
    it mints (audited as ``publisher.confirmed`` or ``pending.confirmed``); DESIGN.md, "Owners
    are confirmed".

    ``ids`` holds the id the operator expects, by spec field (``{"owner_id": "1001"}``): it
    must equal the id the first token pinned, or, before any token, becomes the pinned id.

    Raises:
        RegistrationError: the id is not a UUID; no expected id was given (the message shows the
            pinned one and the command that confirms it); the expected id is malformed, for
            another provider's field, or differs from the pinned one.
        NotFound: no such publisher.
    """
    pid = parse_id(publisher_id)
    async with conn.transaction():
        row = await conn.fetchrow(_LOCK_PUBLISHER, pid)
        pending = row is None
        if pending:
            row = await conn.fetchrow(_LOCK_PENDING, pid)
        if row is None:
            raise NotFound(f"no publisher with id {pid}")
        provider, spec = row["provider"], dict(row["spec"])
        rules = PROVIDERS.get(provider)
        field_name = rules.owner_field if rules is not None and rules.owner_field else ""
        wrong = sorted(set(ids) - {field_name})
        if wrong and not field_name:
            raise RegistrationError(f"a {provider} publisher has no owner id to confirm")
        if wrong:
            raise RegistrationError(
                f"a {provider} publisher's owner is confirmed with {_flag(field_name)}, "
                f"not with {_flag(wrong[0])}"
            )
        value, pinned = ids.get(field_name), spec.get(field_name)
        if value is not None and not _NUMERIC_ID.fullmatch(value):
            raise RegistrationError(
                f"{_flag(field_name)} must be a numeric id (digits only), got {quote(value)}"
            )
        if value is not None and pinned is not None and value != pinned:
            raise RegistrationError(
                f"publisher {pid} has {field_name.replace('_', ' ')} {pinned}, not {value}: the account now "
                f"named {quote(spec.get(_owner_name(provider), ''))} is not the one you expect; "
                f"remove the publisher (trustpub publisher remove {pid}) and register it again with "
                f"{_flag(field_name)} {value}"
            )
        if not row["needs_confirmation"]:
            found = await (get_pending(conn, pid) if pending else get_publisher(conn, pid))
            return Confirmation(found, field_name, str(pinned or ""), confirmed_now=False)
        if value is None:
            raise RegistrationError(await _awaiting_message(conn, pid, provider, spec, field_name))
        await conn.execute(
            _CONFIRM_PENDING if pending else _CONFIRM_PUBLISHER,
            pid,
            {} if pinned is not None else {field_name: value},
        )
        await insert_audit(
            conn,
            "pending.confirmed" if pending else "publisher.confirmed",
            publisher_id=pid,
            outcome="ok",
            detail={
                "provider": provider,
                field_name: value,
                "pinned_by": "first token" if pinned is not None else "operator",
                "registrant": row["registrant"],
                "by": actor,
            },
        )
        confirmed = await (get_pending(conn, pid) if pending else get_publisher(conn, pid))
    return Confirmation(confirmed, field_name, value, confirmed_now=True)


async def _awaiting_message(
    conn: asyncpg.Connection, pid: uuid.UUID, provider: str, spec: Mapping[str, Any], field_name: str
) -> str:
    owner_field = _owner_name(provider)
    owner = f"{owner_field} {quote(spec.get(owner_field, ''))}"
    what = field_name.replace("_", " ")
    pinned = spec.get(field_name)
    if pinned is None:
        return (
            f"publisher {pid} awaits its first token, which pins the {what} of {owner}; or give the id "
            f"you expect: trustpub publisher confirm {pid} {_flag(field_name)} ID"
        )
    last = await last_pin(conn, pid)
    when = (
        f" at {last[0].isoformat(timespec='seconds')} (exchange {last[1] or '?'})" if last is not None else ""
    )
    return (
        f"publisher {pid} awaits confirmation: its first token pinned {what} {pinned} for {owner}{when}; "
        f"check that {pinned} is the account you expect, then run: trustpub publisher confirm {pid} "
        f"{_flag(field_name)} {pinned}"
    )
