"""``trustpub admin token ...``: the admin API's tokens (DESIGN.md, "The admin API").

    trustpub admin token create --name NAME --scope admin|read|owner [--project P ...] [--days N]
    trustpub admin token list | admin token revoke ID

A token is shown once, by ``create``; the database keeps only its SHA-256. With ``--api URL``
(or ``TRUSTPUB_API_URL``), ``project``, ``publisher`` and ``audit`` commands go to the admin API
with the token in ``TRUSTPUB_API_TOKEN`` (or the file ``TRUSTPUB_API_TOKEN_FILE`` names) instead
of PostgreSQL, and print its JSON answer.
"""

from __future__ import annotations

import argparse
import getpass
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from trustpub.registry import admintokens, publisherfields


def add_commands(commands: Any, common: argparse.ArgumentParser, parser_class: type) -> None:  # noqa: ANN401  (argparse's private subparsers type)
    """Add ``admin token create|list|revoke`` to the CLI's subcommands."""
    admin = commands.add_parser("admin", help="the admin API").add_subparsers(
        dest="action", metavar="{token}", required=True, parser_class=parser_class
    )
    token = admin.add_parser("token", help="API tokens").add_subparsers(
        dest="token_action", metavar="{create,list,revoke}", required=True, parser_class=parser_class
    )
    create = token.add_parser("create", parents=[common], help="create an API token (shown once)")
    create.add_argument("--name", required=True, help="what the token is for (in every audit row it causes)")
    create.add_argument(
        "--scope",
        required=True,
        choices=admintokens.SCOPES,
        help="admin: everything; read: every read, no change; owner: the publishers of the --project ones",
    )
    create.add_argument(
        "--project",
        action="append",
        default=[],
        dest="projects",
        metavar="NAME",
        help="(scope owner) a project it owns",
    )
    create.add_argument(
        "--days",
        type=int,
        default=30,
        help=f"days until it expires (default 30, at most {admintokens.MAX_DAYS})",
    )
    token.add_parser("list", parents=[common], help="list API tokens (never their secret)")
    revoke = token.add_parser("revoke", parents=[common], help="revoke an API token")
    revoke.add_argument("id")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


async def token_command(conn: Any, args: argparse.Namespace, as_json: bool) -> None:  # noqa: ANN401, FBT001
    """The handler of ``admin token ...``."""
    if args.token_action == "create":
        token, secret = await admintokens.create_token(
            conn,
            name=args.name,
            scope=args.scope,
            projects=args.projects,
            days=args.days,
            created_by=_actor(),
        )
        if as_json:
            print(json.dumps(token.to_json() | {"token": secret}, indent=2, sort_keys=True))  # noqa: T201
            return
        expires = token.expires_at.isoformat()
        print(f"created API token {token.id} ({token.name}, scope {token.scope}, expires {expires})")  # noqa: T201
        print("shown once; keep it in a secret store:")  # noqa: T201
        print(secret)  # noqa: T201  (the one time it is shown)
        return
    if args.token_action == "list":
        tokens = await admintokens.list_tokens(conn)
        if as_json:
            print(json.dumps([t.to_json() for t in tokens], indent=2, sort_keys=True))  # noqa: T201
            return
        for t in tokens:
            state = "revoked" if t.revoked_at else f"expires {t.expires_at.isoformat()}"
            projects = f" {','.join(t.projects)}" if t.projects else ""
            print(f"{t.id}  {t.scope}{projects}  {t.name!r}  {state}")  # noqa: T201
        return
    revoked = await admintokens.revoke_token(conn, args.id, actor=_actor())
    if as_json:
        print(json.dumps(revoked.to_json(), indent=2, sort_keys=True))  # noqa: T201
        return
    print(f"revoked API token {revoked.id} ({revoked.name})")  # noqa: T201


# --- the CLI over the admin API ------------------------------------------------------------------

# The commands that work over the admin API too (``--api URL``, token in TRUSTPUB_API_TOKEN).
API_COMMANDS = {("project", "add"), ("project", "list"), ("publisher", "add"), ("publisher", "list")}
API_COMMANDS |= {("publisher", "remove"), ("audit", "list"), ("apply", ""), ("export", "")}


class ApiCommandError(Exception):
    """The API refused the call, or could not be reached: the message is one line."""


def _request(base: str, token: str, method: str, path: str, body: Any = None) -> Any:  # noqa: ANN401
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(  # noqa: S310  (the operator's URL, http or https)
        base.rstrip("/") + "/admin/v1" + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read())
            detail = "; ".join(f"{e['field']}: {e['message']}" for e in answer.get("errors", []))
            message = answer.get("message", "") + (
                f" ({detail})" if detail and detail not in answer["message"] else ""
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            message = exc.reason
        raise ApiCommandError(f"HTTP {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ApiCommandError(f"cannot reach the admin API at {base}: {exc}") from None


def _registration(args: argparse.Namespace) -> dict[str, Any]:
    """``publisher add``'s arguments as the API's fields (the CLI's names, with underscores)."""
    body: dict[str, Any] = {"provider": args.provider}
    for name in publisherfields.field_names(args.provider):
        value = getattr(args, name, None)
        if name != "provider" and value not in (None, "", [], False):
            body[name] = value
    return body


def _file_command(args: argparse.Namespace, base: str, token: str) -> Any:  # noqa: ANN401
    """``export`` and ``apply`` over the API: the registry plans and applies under its lock."""
    if args.command == "export":
        return _request(base, token, "GET", "/export")
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiCommandError(f"cannot read {args.file}: {exc}") from None
    return _request(
        base, token, "POST", "/apply", {"file": text, "dry_run": args.dry_run, "prune": args.prune}
    )


def api_command(args: argparse.Namespace, base: str, token: str) -> Any:  # noqa: ANN401, PLR0911  (one call per command)
    """Run ``args`` over the admin API; returns the answer (JSON).

    Raises:
        ApiCommandError: a refusal, or the API cannot be reached.
    """
    key = (args.command, getattr(args, "action", ""))
    if args.command in {"apply", "export"}:
        return _file_command(args, base, token)
    if key == ("project", "add"):
        return _request(base, token, "POST", "/projects", {"name": args.name})
    if key == ("project", "list"):
        return _request(base, token, "GET", "/projects")
    if key == ("publisher", "add"):
        return _request(base, token, "POST", "/publishers", _registration(args))
    if key == ("publisher", "list"):
        if args.pending:
            return _request(base, token, "GET", "/pending")
        query = f"?{urllib.parse.urlencode({'project': args.project})}" if args.project else ""
        return _request(base, token, "GET", "/publishers" + query)
    if key == ("publisher", "remove"):
        target = urllib.parse.quote(args.id, safe="")
        try:
            return _request(base, token, "DELETE", f"/publishers/{target}")
        except ApiCommandError as exc:
            if not str(exc).startswith("HTTP 404"):
                raise
            return _request(base, token, "DELETE", f"/pending/{target}")
    filters = {"kind": args.kind, "code": args.code, "exchange_id": args.exchange, "limit": args.limit}
    filters |= {
        "since": args.since.isoformat() if args.since else None,
        "refused": "true" if args.refused else None,
    }
    query = urllib.parse.urlencode({k: v for k, v in filters.items() if v is not None})
    return _request(base, token, "GET", f"/audit?{query}")
