"""``trustpub admin token ...``: the admin API's tokens (DESIGN.md, "The admin API").

    trustpub admin token create --name NAME --scope admin|read|owner [--project P ...] [--days N]
    trustpub admin token list | admin token revoke ID

A token is shown once, by ``create``; the database keeps only its SHA-256.
"""

from __future__ import annotations

import argparse
import getpass
import json
from typing import Any

from trustpub.registry import admintokens


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
