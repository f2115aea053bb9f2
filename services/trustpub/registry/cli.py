"""``trustpub``: the operator's command line for the registry database.

    trustpub migrate
    trustpub project add NAME | project list
    trustpub publisher add github --project P --owner O --repository R --workflow release.yml ...
    trustpub publisher add gitlab --project P --project-path GROUP/PROJ --ci-config-path .gitlab-ci.yml
    trustpub publisher add google --project P --email SA@PROJ.iam.gserviceaccount.com [--sub ID]
    trustpub publisher add activestate --project P --organization O --activestate-project AP --actor-id UUID
    trustpub publisher add <provider> --pending-project NEW --registrant WHO ...   (a pending publisher)
    trustpub publisher list [--project P | --pending] | publisher remove ID
    trustpub publisher confirm ID [--owner-id N | --namespace-id N]   (one registered with --pin-on-first-use)
    trustpub audit list [--refused] [--code C] [--since ISO] [--limit N] [--json]
    trustpub admin token create --name N --scope admin|read|owner [--project P] | list | revoke ID
    trustpub apply -f publishers.toml [--dry-run] [--prune] | trustpub export [-o FILE]
    trustpub bus init DIR | bus authorization DIR [--root R] | bus kubernetes DIR   (no database)
    trustpub provenance verify FILE --url https://upload-host                      (no database)

The database is ``TRUSTPUB_DATABASE_URL`` or the file ``TRUSTPUB_DATABASE_URL_FILE`` names (or
``--database-url-file PATH``), else the registry's default. ``--database-url`` works too, but a
password on the command line is visible to every user (``ps``, ``/proc/<pid>/cmdline``): it is
used with a warning. Exit status: 0 done, 2 bad input (one line on stderr), 1 database unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from trustpub.providers import PROVIDERS
from trustpub.providers.base import Provider
from trustpub.providers.rules import RegistrationError
from trustpub.registry import admin_cli, ascode, audit_cli, migrations, publisherfields
from trustpub.registry.config import Settings
from trustpub.registry.owners import confirm_publisher
from trustpub.registry.pending import (
    PendingPublisher,
    add_pending_publisher,
    list_pending_publishers,
    remove_pending_publisher,
)
from trustpub.registry.pool import OUTAGE_ERRORS, connect
from trustpub.registry.publishers import (
    NewPublisher,
    NotFound,
    Publisher,
    add_project,
    add_publisher,
    list_projects,
    list_publishers,
    remove_publisher,
)
from trustpub.runtime import buscli, provenancecli
from trustpub.runtime.config import ConfigError, env_name, load, read_secret

EXIT_OK = 0
EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2
EXIT_CONFLICT = 3

_AWAITING = "awaiting-confirmation"
_REMOVAL_NOTE = (
    "tokens already minted through it stay valid until they expire for an index that does "
    "not ask; introspection (mint.status) reports them revoked from now on"
)


class UsageError(Exception):
    """Bad command-line input; the message is shown as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _redact(url: str) -> str:
    """The database URL without its password, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the configured database"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _confirm_parser(
    publisher: Any,  # noqa: ANN401  (argparse's subparsers)
    common: argparse.ArgumentParser,
    providers: Mapping[str, Provider],
) -> None:
    pconfirm = publisher.add_parser(
        "confirm",
        parents=[common],
        help="confirm the owner's id a publisher registered with --pin-on-first-use was pinned to",
    )
    pconfirm.add_argument("id")
    for field_name in _owner_fields(providers):
        titles = " or ".join(p.title for p in providers.values() if p.owner_field == field_name)
        pconfirm.add_argument(
            "--" + field_name.replace("_", "-"),
            dest=field_name,
            help=f"the {titles} {field_name.replace('_', ' ')} you expect (it must be the pinned one)",
        )


def _owner_fields(providers: Mapping[str, Provider]) -> list[str]:
    """The spec fields of owners' ids that ``publisher confirm`` takes, one option each."""
    return list(dict.fromkeys(p.owner_field for p in providers.values() if p.owner_field))


def build_parser(providers: Mapping[str, Provider] = PROVIDERS) -> argparse.ArgumentParser:
    """The command line; ``publisher add`` has one subcommand per provider of ``providers``."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--database-url",
        default=argparse.SUPPRESS,
        help=(
            f"PostgreSQL URL (default: ${env_name('database_url')} or the file "
            f"${env_name('database_url')}_FILE names, else {Settings.database_url}); "
            "not with a password: the command line is visible to every user"
        ),
    )
    common.add_argument(
        "--database-url-file",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="a file holding the PostgreSQL URL (with its password)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    common.add_argument(
        "--api",
        default=argparse.SUPPRESS,
        metavar="URL",
        help=(
            "talk to the admin API at URL (default: $TRUSTPUB_API_URL) instead of PostgreSQL, with "
            "the token in $TRUSTPUB_API_TOKEN or the file $TRUSTPUB_API_TOKEN_FILE names "
            "(project, publisher, audit)"
        ),
    )

    parser = _Parser(
        prog="trustpub",
        description="Manage trustpub's registry: projects and trusted publishers.",
        parents=[common],
    )
    commands = parser.add_subparsers(
        dest="command",
        metavar="{migrate,project,publisher,audit,admin,apply,export,bus,provenance}",
        required=True,
        parser_class=_Parser,
    )

    commands.add_parser("migrate", parents=[common], help="apply database migrations")

    project = commands.add_parser("project", help="projects").add_subparsers(
        dest="action", metavar="{add,list}", required=True, parser_class=_Parser
    )
    add = project.add_parser("add", parents=[common], help="add a project")
    add.add_argument("name")
    add.add_argument("--registrant", default=_default_actor(), help="who adds it (for the audit)")
    project.add_parser("list", parents=[common], help="list projects")

    publisher = commands.add_parser("publisher", help="trusted publishers").add_subparsers(
        dest="action", metavar="{add,list,remove,confirm}", required=True, parser_class=_Parser
    )
    padd = publisher.add_parser("add", help="register a trusted publisher").add_subparsers(
        dest="provider", metavar="{" + ",".join(providers) + "}", required=True, parser_class=_Parser
    )
    for provider in providers.values():
        provider.add_arguments(padd.add_parser(provider.name, parents=[common], help=provider.cli_help))

    plist = publisher.add_parser("list", parents=[common], help="list publishers")
    plist.add_argument("--project", help="only the publishers of this project")
    plist.add_argument("--pending", action="store_true", help="the pending publishers instead")
    premove = publisher.add_parser(
        "remove", parents=[common], help="unlink and delete a publisher (or a pending one)"
    )
    premove.add_argument("id")
    _confirm_parser(publisher, common, providers)
    audit_cli.add_commands(commands, common, _Parser)
    admin_cli.add_commands(commands, common, _Parser)
    apply = commands.add_parser("apply", parents=[common], help="make the database match a publishers file")
    apply.add_argument("-f", "--file", required=True, type=Path, help="the file (TOML; see trustpub export)")
    apply.add_argument("--dry-run", action="store_true", help="print the plan only")
    apply.add_argument(
        "--prune", action="store_true", help="remove publishers and projects the file does not list"
    )
    export = commands.add_parser(
        "export", parents=[common], help="print the projects and publishers as a file"
    )
    export.add_argument("-o", "--output", type=Path, help="write it to this file instead")
    buscli.add_commands(commands, _Parser)
    provenancecli.add_commands(commands, _Parser)
    return parser


def _print_json(value: Any) -> None:  # noqa: ANN401
    print(json.dumps(value, indent=2, sort_keys=True))  # noqa: T201  (CLI output)


def _out(line: str = "") -> None:
    print(line)  # noqa: T201  (CLI output)


def identity_lines(
    provider: str, spec: dict[str, Any], providers: Mapping[str, Provider] = PROVIDERS
) -> list[str]:
    """A publisher's identity for the CLI's summaries, one line per field."""
    found = providers.get(provider)
    if found is None:
        return [f"  spec         {json.dumps(spec, sort_keys=True)}"]
    return found.identity_lines(spec)


def _publisher_summary(p: Publisher | PendingPublisher) -> list[str]:
    lines = [
        f"  provider     {p.provider}",
        f"  issuer       {p.issuer}",
        *identity_lines(p.provider, p.spec),
    ]
    if isinstance(p, PendingPublisher):
        lines += [
            f"  creates      {p.project_name} (pending: on its first exchange)",
            f"  expires      {p.expires_at.isoformat(timespec='seconds')}",
        ]
    else:
        lines.append(f"  projects     {', '.join(p.projects) or '(none)'}")
    lines.append(f"  registrant   {p.registrant}")
    if p.needs_confirmation:
        lines.append(f"  state        {_AWAITING}: mints nothing until an operator confirms its owner's id")
    return lines


def identity_short(provider: str, spec: dict[str, Any], providers: Mapping[str, Provider] = PROVIDERS) -> str:
    """A publisher's identity on one line, for ``publisher list``."""
    found = providers.get(provider)
    return found.summary(spec) if found is not None else json.dumps(spec, sort_keys=True)


def _publisher_line(p: Publisher | PendingPublisher) -> str:
    what = identity_short(p.provider, p.spec)
    if isinstance(p, PendingPublisher):
        expires = p.expires_at.isoformat(timespec="seconds")
        line = f"{p.id}  {p.provider}  {what}  pending={p.project_name}  expires={expires}"
    else:
        line = f"{p.id}  {p.provider}  {what}  projects={','.join(p.projects)}"
    return f"{line}  state={_AWAITING}" if p.needs_confirmation else line


Handler = Callable[[Any, argparse.Namespace, bool], Awaitable[None]]


async def _project_add(conn: Any, args: argparse.Namespace, as_json: bool) -> None:  # noqa: ANN401, FBT001
    project = await add_project(conn, args.name, created_by=args.registrant)
    if as_json:
        _print_json(project.to_json())
    else:
        _out(f"added project {project.name} ({project.id})")


async def _project_list(conn: Any, _: argparse.Namespace, as_json: bool) -> None:  # noqa: ANN401, FBT001
    projects = await list_projects(conn)
    if as_json:
        _print_json([p.to_json() for p in projects])
        return
    for p in projects:
        _out(f"{p.id}  {p.name}")


def new_publisher(args: argparse.Namespace, providers: Mapping[str, Provider] = PROVIDERS) -> NewPublisher:
    """Validate ``publisher add <provider>``'s arguments and build the registration."""
    provider = providers[args.provider]
    registrant = args.registrant if args.registrant is not None else _default_actor()
    return publisherfields.new_publisher(provider, provider.values(args), registrant=registrant)


def _warnings(new: NewPublisher) -> list[str]:
    found = PROVIDERS.get(new.provider)
    return found.warnings(new.spec) if found is not None else []


async def _publisher_add(conn: Any, args: argparse.Namespace, as_json: bool) -> None:  # noqa: ANN401, FBT001
    if args.pending_project is not None and args.projects:
        raise RegistrationError("give either --project (existing projects) or --pending-project (a new one)")
    if args.pending_project is None and not args.projects:
        raise RegistrationError(
            "name at least one project (--project NAME), or --pending-project NAME for a project "
            "that does not exist yet"
        )
    if args.pending_project is not None and not (args.registrant or "").strip():
        raise RegistrationError(
            "a pending publisher needs --registrant WHO: it counts against their limit of pending publishers"
        )
    new = new_publisher(args)
    warnings = _warnings(new)
    if args.pending_project is not None:
        try:
            settings = load(Settings)
        except ConfigError as exc:
            raise RegistrationError(str(exc)) from None
        pending = await add_pending_publisher(
            conn,
            new,
            args.pending_project,
            ttl_days=settings.pending_ttl_days,
            max_per_registrant=settings.max_pending_per_registrant,
        )
        if as_json:
            _print_json(
                {"created": True, "pending": True, "publisher": pending.to_json(), "warnings": warnings}
            )
            return
        _print_added(f"created pending publisher {pending.id}", pending, warnings)
        return
    publisher, created = await add_publisher(conn, new, args.projects)
    if as_json:
        _print_json({"created": created, "publisher": publisher.to_json(), "warnings": warnings})
        return
    verb = "created publisher" if created else "linked existing publisher"
    _print_added(f"{verb} {publisher.id}", publisher, warnings)


def _print_added(headline: str, p: Publisher | PendingPublisher, warnings: list[str]) -> None:
    _out(headline)
    _out("\n".join(_publisher_summary(p)))
    for w in warnings:
        _out(f"warning: {w}")
    if p.needs_confirmation:
        _out(f"note: {_confirmation_note(p)}")


def _confirmation_note(p: Publisher | PendingPublisher) -> str:
    found = PROVIDERS.get(p.provider)
    flag = "--" + (found.owner_field if found is not None and found.owner_field else "owner_id").replace(
        "_", "-"
    )
    return (
        f"registered without {flag}: its first token pins the id and is refused; check the pinned id, "
        f"then enable it with: trustpub publisher confirm {p.id} {flag} ID"
    )


async def _publisher_confirm(conn: Any, args: argparse.Namespace, as_json: bool) -> None:  # noqa: ANN401, FBT001
    ids = {name: value for name in _owner_fields(PROVIDERS) if (value := getattr(args, name)) is not None}
    done = await confirm_publisher(conn, args.id, ids, actor=_default_actor())
    p = done.publisher
    if as_json:
        _print_json({"confirmed": done.confirmed_now, "publisher": p.to_json()})
        return
    if not done.confirmed_now:
        _out(f"publisher {p.id} needs no confirmation")
        return
    kind = "pending publisher" if isinstance(p, PendingPublisher) else "publisher"
    _out(f"confirmed {kind} {p.id}: {done.field.replace('_', ' ')} {done.value}; it mints from now on")
    _out("\n".join(_publisher_summary(p)))


async def _publisher_list(conn: Any, args: argparse.Namespace, as_json: bool) -> None:  # noqa: ANN401, FBT001
    listed: Sequence[Publisher | PendingPublisher]
    if args.pending:
        if args.project:
            raise RegistrationError("--pending lists every pending publisher; leave out --project")
        listed = await list_pending_publishers(conn)
    else:
        listed = await list_publishers(conn, project=args.project)
    if as_json:
        _print_json([p.to_json() for p in listed])
        return
    for p in listed:
        _out(_publisher_line(p))


async def _publisher_remove(conn: Any, args: argparse.Namespace, as_json: bool) -> None:  # noqa: ANN401, FBT001
    try:
        removed: Publisher | PendingPublisher = await remove_publisher(conn, args.id, actor=_default_actor())
    except NotFound:
        removed = await remove_pending_publisher(conn, args.id, actor=_default_actor())
        if as_json:
            _print_json({"removed": removed.to_json()})
            return
        _out(f"removed pending publisher {removed.id}")
        _out("\n".join(_publisher_summary(removed)))
        return
    if as_json:
        _print_json({"removed": removed.to_json(), "note": _REMOVAL_NOTE})
        return
    _out(f"removed publisher {removed.id}")
    _out("\n".join(_publisher_summary(removed)))
    _out(f"note: {_REMOVAL_NOTE}")


async def _apply(conn: Any, args: argparse.Namespace, as_json: bool) -> None:  # noqa: ANN401, FBT001
    """``trustpub apply -f FILE``: the plan, then (unless --dry-run) the changes.

    Raises:
        ascode.FileErrors: the file has errors (nothing changed).
        ascode.Conflict: another apply ran, or the database changed (nothing changed).
    """
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistrationError(f"cannot read {args.file}: {exc}") from None
    desired = ascode.parse(text, registrant=f"apply:{_default_actor()}")
    plan = await ascode.plan(conn, desired, prune=args.prune)
    if as_json:
        done = (
            0
            if args.dry_run or plan.empty
            else await ascode.apply(conn, desired, plan, prune=args.prune, actor=f"apply:{_default_actor()}")
        )
        _print_json({"plan": plan.lines(), "applied": done})
        return
    _out("\n".join(f"  {line}" for line in plan.lines()) if not plan.empty else "  nothing to change")
    if args.dry_run or plan.empty:
        return
    done = await ascode.apply(conn, desired, plan, prune=args.prune, actor=f"apply:{_default_actor()}")
    _out(f"applied {done} change(s)")


async def _export(conn: Any, args: argparse.Namespace, _: bool) -> None:  # noqa: ANN401, FBT001
    _write_export(args, await ascode.export(conn))


def _write_export(args: argparse.Namespace, text: str) -> None:
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


_HANDLERS: dict[tuple[str, str], Handler] = {
    ("audit", "list"): audit_cli.list_command,
    ("admin", "token"): admin_cli.token_command,
    ("apply", ""): _apply,
    ("export", ""): _export,
    ("project", "add"): _project_add,
    ("project", "list"): _project_list,
    ("publisher", "add"): _publisher_add,
    ("publisher", "list"): _publisher_list,
    ("publisher", "remove"): _publisher_remove,
    ("publisher", "confirm"): _publisher_confirm,
}


async def _run(args: argparse.Namespace, url: str) -> None:
    as_json = bool(getattr(args, "json", False))
    if args.command == "migrate":
        applied = await migrations.apply(url)
        if as_json:
            _print_json({"applied": applied})
        else:
            _out(f"applied {', '.join(applied)}" if applied else "the schema is up to date")
        return
    handler = _HANDLERS[(args.command, getattr(args, "action", ""))]
    conn = await connect(url)
    try:
        await handler(conn, args, as_json)
    finally:
        await conn.close()


def _fail(message: str) -> None:
    print(f"trustpub: error: {message}", file=sys.stderr)  # noqa: T201  (CLI output)


def _bus(args: argparse.Namespace) -> int:
    try:
        _out(buscli.run(args))
    except buscli.BusCommandError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 database unavailable, 2 bad input)."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    if args.command == "provenance":
        return _provenance(args)
    api = getattr(args, "api", None) or os.environ.get("TRUSTPUB_API_URL")
    if api and (args.command, getattr(args, "action", "")) in admin_cli.API_COMMANDS:
        return _api(args, api)
    return _bus(args) if args.command == "bus" else _database_command(args)


def _api(args: argparse.Namespace, url: str) -> int:
    """A command over the admin API; its JSON answer on stdout."""
    token = os.environ.get("TRUSTPUB_API_TOKEN", "")
    try:
        if not token and os.environ.get("TRUSTPUB_API_TOKEN_FILE"):
            token = read_secret("TRUSTPUB_API_TOKEN_FILE", os.environ["TRUSTPUB_API_TOKEN_FILE"])
        if not token:
            _fail("--api needs a token: TRUSTPUB_API_TOKEN or TRUSTPUB_API_TOKEN_FILE")
            return EXIT_USAGE
        answer = admin_cli.api_command(args, url, token)
        if args.command == "export" and not getattr(args, "json", False):
            _write_export(args, answer["file"])
        elif args.command == "apply" and not getattr(args, "json", False):
            _out("\n".join(f"  {line}" for line in answer["plan"]) or "  nothing to change")
            if answer["applied"]:
                _out(f"applied {answer['applied']} change(s)")
        else:
            _print_json(answer)
    except ConfigError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except admin_cli.ApiCommandError as exc:
        _fail(str(exc))
        if str(exc).startswith("HTTP 409"):
            return EXIT_CONFLICT
        return EXIT_USAGE if str(exc).startswith("HTTP 4") else EXIT_UNAVAILABLE
    return EXIT_OK


def _provenance(args: argparse.Namespace) -> int:
    try:
        _out(provenancecli.run(args))
    except provenancecli.ProvenanceCommandError as exc:
        _fail(str(exc))
        return provenancecli.EXIT_NOT_VERIFIED
    return provenancecli.EXIT_VERIFIED


def _has_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None or "password=" in url.lower()
    except ValueError:
        return "password" in url.lower()


def _database_url(args: argparse.Namespace) -> str:
    """``--database-url``, ``--database-url-file``, else the registry's setting (the
    environment, or the file ``TRUSTPUB_DATABASE_URL_FILE`` names), else its default.

    Raises:
        ConfigError: a file that cannot be read, or both forms of the setting.
    """
    given = getattr(args, "database_url", None)
    if given:
        if _has_password(given):
            name = env_name("database_url")
            print(  # noqa: T201  (CLI output)
                "trustpub: warning: a password on the command line (--database-url) is visible to "
                f"every user of this machine (ps, /proc); use {name}, {name}_FILE or --database-url-file",
                file=sys.stderr,
            )
        return str(given)
    path = getattr(args, "database_url_file", None)
    if path:
        return read_secret("--database-url-file", path)
    name = env_name("database_url")
    env = {key: os.environ[key] for key in (name, name + "_FILE") if key in os.environ}
    return load(Settings, env).database_url


def _database_command(args: argparse.Namespace) -> int:  # noqa: PLR0911  (one exit status per outcome)
    try:
        url = _database_url(args)
    except ConfigError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    try:
        asyncio.run(_run(args, url))
    except (RegistrationError, NotFound) as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except ascode.FileErrors as exc:
        for error in exc.errors:
            _fail(f"{args.file}: {error}")
        _fail("nothing was changed")
        return EXIT_USAGE
    except ascode.Conflict as exc:
        _fail(str(exc))
        return EXIT_CONFLICT
    except asyncpg.exceptions.UndefinedTableError:
        _fail(f"the database at {_redact(url)} has no trustpub schema; run: trustpub migrate")
        return EXIT_UNAVAILABLE
    except (*OUTAGE_ERRORS, asyncpg.PostgresError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _fail(f"the database at {_redact(url)} is unavailable ({reason})")
        return EXIT_UNAVAILABLE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
