"""``trustpub audit list``: the audit trail, newest first.

    trustpub audit list [--refused] [--kind K] [--code C] [--since ISO] [--exchange ID]
                        [--limit N] [--json]

Every refused exchange is in it (``exchange.failed``: issuer, provider, code, reason and a
prefix of the token's SHA-256, never the token), beside the successful ones and the registry's
own events (publisher created, pinned, removed; token revoked).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from trustpub.providers.rules import RegistrationError
from trustpub.registry.audit import MAX_AUDIT_LIST, AuditEvent, list_audit_events

REFUSED = "exchange.failed"


def add_commands(commands: Any, common: argparse.ArgumentParser, parser_class: type) -> None:  # noqa: ANN401  (argparse's private subparsers type)
    """Add ``audit list`` to the CLI's subcommands."""
    audit = commands.add_parser("audit", help="the audit trail").add_subparsers(
        dest="action", metavar="{list}", required=True, parser_class=parser_class
    )
    alist = audit.add_parser("list", parents=[common], help="list audit records, newest first")
    alist.add_argument("--refused", action="store_true", help=f"only refused exchanges ({REFUSED})")
    alist.add_argument(
        "--kind", help="only this kind (exchange.failed, exchange.succeeded, publisher.created, ...)"
    )
    alist.add_argument("--code", help="only this error code (invalid-token, rate-limited, ...)")
    alist.add_argument(
        "--since", type=_since, help="only records at or after this ISO 8601 time (UTC if no zone)"
    )
    alist.add_argument("--exchange", help="only the records of this exchange id (X-Trustpub-Exchange-Id)")
    alist.add_argument(
        "--limit", type=int, default=50, help=f"at most this many (default 50, max {MAX_AUDIT_LIST})"
    )


def _since(value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        msg = f"--since {value!r} is not an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"
        raise argparse.ArgumentTypeError(msg) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def shown(value: object) -> str:
    """``value`` safe for an operator's terminal: every character that is not printable
    (escape sequences, carriage returns, bidirectional overrides, ...) as a Python escape.
    Audit rows hold what tokens and clients sent; none of it may drive the terminal."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def line(event: AuditEvent) -> str:
    """One record on one line: time, kind, code (or outcome), whose token, and the reason."""
    d = event.to_json()
    parts = [
        event.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        shown(event.kind),
        shown(event.code or event.outcome or "-"),
    ]
    parts.extend(f"{key}={shown(d[key])}" for key in ("issuer", "provider") if d[key])
    if d["token_hash_prefix"]:
        parts.append(f"token={shown(d['token_hash_prefix'])}")
    if event.exchange_id:
        parts.append(f"exchange={shown(event.exchange_id)}")
    if d["reason"]:
        # One line per record, whatever the reason says.
        parts.append(shown(json.dumps(d["reason"], ensure_ascii=True)))
    return "  ".join(parts)


async def list_command(conn: Any, args: argparse.Namespace, as_json: bool) -> None:  # noqa: ANN401, FBT001
    """The handler of ``audit list``.

    Raises:
        RegistrationError: ``--refused`` with another ``--kind``, or a limit out of range.
    """
    kind = args.kind
    if args.refused:
        if kind not in {None, REFUSED}:
            raise RegistrationError(
                f"--refused lists {REFUSED} records; it cannot be combined with --kind {kind}"
            )
        kind = REFUSED
    events = await list_audit_events(
        conn, kind=kind, code=args.code, since=args.since, exchange_id=args.exchange, limit=args.limit
    )
    if as_json:
        # ensure_ascii escapes every control character but DEL, which JSON lets through raw.
        text = json.dumps([e.to_json() for e in events], indent=2, sort_keys=True)
        print(text.replace("\x7f", "\\u007f"))  # noqa: T201  (CLI output)
        return
    for event in events:
        print(line(event))  # noqa: T201  (CLI output)
