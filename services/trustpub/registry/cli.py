"""``trustpub``: the operator's command line for the registry database.

    trustpub migrate
    trustpub project add NAME | project list
    trustpub publisher add github --project P --owner O --repository R --workflow release.yml ...
    trustpub publisher list [--project P] | publisher remove ID

The database is ``--database-url``, else ``TRUSTPUB_DATABASE_URL``, else the registry's
default. Exit status: 0 done, 2 bad input (one line on stderr), 1 database unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from trustpub.providers import github
from trustpub.providers.issuers import GITHUB
from trustpub.providers.rules import RegistrationError
from trustpub.registry import db, migrations
from trustpub.registry.config import Settings
from trustpub.runtime.config import env_name

EXIT_OK = 0
EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2

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


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--database-url",
        default=argparse.SUPPRESS,
        help=f"PostgreSQL URL (default: ${env_name('database_url')}, else {Settings.database_url})",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )

    parser = _Parser(
        prog="trustpub",
        description="Manage trustpub's registry: projects and trusted publishers.",
        parents=[common],
    )
    commands = parser.add_subparsers(
        dest="command", metavar="{migrate,project,publisher}", required=True, parser_class=_Parser
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
        dest="action", metavar="{add,list,remove}", required=True, parser_class=_Parser
    )
    padd = publisher.add_parser("add", help="register a trusted publisher").add_subparsers(
        dest="provider", metavar="{github}", required=True, parser_class=_Parser
    )
    gh = padd.add_parser("github", parents=[common], help="a GitHub Actions workflow")
    gh.add_argument(
        "--project",
        action="append",
        required=True,
        dest="projects",
        metavar="PROJECT",
        help="project it may publish (repeat for several)",
    )
    gh.add_argument("--owner", required=True, help="repository owner (user or organization)")
    gh.add_argument("--owner-id", help="owner's numeric id (default: pinned on first use)")
    gh.add_argument("--repository", required=True, help="repository name, without the owner")
    gh.add_argument("--repository-id", help="repository's numeric id (default: pinned on first use)")
    gh.add_argument("--workflow", required=True, help="workflow file name, e.g. release.yml")
    gh.add_argument("--environment", default="", help="GitHub environment required (default: any)")
    gh.add_argument(
        "--allow-reusable-workflow",
        action="append",
        default=[],
        dest="reusable",
        metavar="REF",
        help="owner/repo/.github/workflows/file.yml[@ref] that may run the job",
    )
    gh.add_argument(
        "--allow-event",
        action="append",
        default=[],
        dest="events",
        metavar="EVENT",
        help="pull_request_target or workflow_run, refused unless allowed",
    )
    gh.add_argument("--issuer", default=GITHUB, help=f"token issuer (default: {GITHUB})")
    gh.add_argument("--registrant", default=_default_actor(), help="who registers it (for the audit)")

    plist = publisher.add_parser("list", parents=[common], help="list publishers")
    plist.add_argument("--project", help="only the publishers of this project")
    premove = publisher.add_parser("remove", parents=[common], help="unlink and delete a publisher")
    premove.add_argument("id")
    return parser


def _print_json(value: Any) -> None:  # noqa: ANN401
    print(json.dumps(value, indent=2, sort_keys=True))  # noqa: T201  (CLI output)


def _out(line: str = "") -> None:
    print(line)  # noqa: T201  (CLI output)


def _publisher_summary(p: db.Publisher) -> list[str]:
    spec = p.spec
    lines = [f"  provider     {p.provider}", f"  issuer       {p.issuer}"]
    if p.provider == github.NAME:
        owner_id = spec.get("owner_id") or "pinned on first use"
        repo_id = spec.get("repository_id") or "pinned on first use"
        lines += [
            f"  repository   {spec['owner']}/{spec['repository']}",
            f"  ids          owner {owner_id}, repository {repo_id}",
            f"  workflow     {spec['workflow']}",
            f"  environment  {spec.get('environment') or '(any)'}",
        ]
        if spec.get("allowed_reusable_workflows"):
            lines.append(f"  reusable     {', '.join(spec['allowed_reusable_workflows'])}")
        if spec.get("allowed_events"):
            lines.append(f"  events       {', '.join(spec['allowed_events'])} (allowed)")
    else:
        lines.append(f"  spec         {json.dumps(spec, sort_keys=True)}")
    lines += [f"  projects     {', '.join(p.projects) or '(none)'}", f"  registrant   {p.registrant}"]
    return lines


def _publisher_line(p: db.Publisher) -> str:
    spec = p.spec
    if p.provider == github.NAME:
        what = (
            f"{spec['owner']}/{spec['repository']}  {spec['workflow']}  env={spec.get('environment') or '*'}"
        )
    else:
        what = json.dumps(spec, sort_keys=True)
    return f"{p.id}  {p.provider}  {what}  projects={','.join(p.projects)}"


Handler = Callable[[Any, argparse.Namespace, bool], Awaitable[None]]


async def _project_add(conn: Any, args: argparse.Namespace, as_json: bool) -> None:  # noqa: ANN401, FBT001
    project = await db.add_project(conn, args.name, created_by=args.registrant)
    if as_json:
        _print_json(project.to_json())
    else:
        _out(f"added project {project.name} ({project.id})")


async def _project_list(conn: Any, _: argparse.Namespace, as_json: bool) -> None:  # noqa: ANN401, FBT001
    projects = await db.list_projects(conn)
    if as_json:
        _print_json([p.to_json() for p in projects])
        return
    for p in projects:
        _out(f"{p.id}  {p.name}")


async def _publisher_add(conn: Any, args: argparse.Namespace, as_json: bool) -> None:  # noqa: ANN401, FBT001
    spec = github.validate_spec(
        owner=args.owner,
        owner_id=args.owner_id,
        repository=args.repository,
        repository_id=args.repository_id,
        workflow=args.workflow,
        environment=args.environment,
        allowed_reusable_workflows=args.reusable,
        allowed_events=args.events,
    )
    issuer = args.issuer.strip()
    if not issuer.startswith("https://"):
        raise RegistrationError(f"issuer {issuer!r} must be an https:// URL")
    new = db.NewPublisher(
        provider=github.NAME,
        issuer=issuer,
        lookup_key=github.spec_lookup_key(spec),
        unique_key=github.unique_key(issuer, spec),
        spec=spec,
        merge=github.merge_spec,
        registrant=args.registrant,
    )
    publisher, created = await db.add_publisher(conn, new, args.projects)
    if as_json:
        _print_json({"created": created, "publisher": publisher.to_json()})
        return
    verb = "created publisher" if created else "linked existing publisher"
    _out(f"{verb} {publisher.id}")
    _out("\n".join(_publisher_summary(publisher)))


async def _publisher_list(conn: Any, args: argparse.Namespace, as_json: bool) -> None:  # noqa: ANN401, FBT001
    publishers = await db.list_publishers(conn, project=args.project)
    if as_json:
        _print_json([p.to_json() for p in publishers])
        return
    for p in publishers:
        _out(_publisher_line(p))


async def _publisher_remove(conn: Any, args: argparse.Namespace, as_json: bool) -> None:  # noqa: ANN401, FBT001
    removed = await db.remove_publisher(conn, args.id, actor=_default_actor())
    if as_json:
        _print_json({"removed": removed.to_json(), "note": _REMOVAL_NOTE})
        return
    _out(f"removed publisher {removed.id}")
    _out("\n".join(_publisher_summary(removed)))
    _out(f"note: {_REMOVAL_NOTE}")


_HANDLERS: dict[tuple[str, str], Handler] = {
    ("project", "add"): _project_add,
    ("project", "list"): _project_list,
    ("publisher", "add"): _publisher_add,
    ("publisher", "list"): _publisher_list,
    ("publisher", "remove"): _publisher_remove,
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
    handler = _HANDLERS[(args.command, args.action)]
    conn = await db.connect(url)
    try:
        await handler(conn, args, as_json)
    finally:
        await conn.close()


def _fail(message: str) -> None:
    print(f"trustpub: error: {message}", file=sys.stderr)  # noqa: T201  (CLI output)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 database unavailable, 2 bad input)."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    url = (
        getattr(args, "database_url", None)
        or os.environ.get(env_name("database_url"))
        or Settings.database_url
    )
    try:
        asyncio.run(_run(args, url))
    except (RegistrationError, db.NotFound) as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except asyncpg.exceptions.UndefinedTableError:
        _fail(f"the database at {_redact(url)} has no trustpub schema; run: trustpub migrate")
        return EXIT_UNAVAILABLE
    except (*db.OUTAGE_ERRORS, asyncpg.PostgresError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _fail(f"the database at {_redact(url)} is unavailable ({reason})")
        return EXIT_UNAVAILABLE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
