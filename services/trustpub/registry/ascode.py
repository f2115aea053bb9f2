"""Publishers as code: ``trustpub apply -f publishers.toml`` and ``trustpub export``
(DESIGN.md, "Publishers as code").

The file lists projects and publishers::

    [[project]]
    name = "demo-pkg"

    [[publisher]]
    provider = "github"
    projects = ["demo-pkg"]
    owner = "octo-org"
    owner_id = "1001"
    repository = "demo"
    workflow = "release.yml"
    allowed_refs = ["refs/tags/v*"]

A publisher's fields are the admin API's (``publisherfields``), checked by the CLI's own
validation; every error names the file's line, and a file with any error changes nothing.
The plan makes the database match the file: projects created, publishers created, linked to
and unlinked from projects, their options changed (a pinned id is never replaced: that takes a
removal); publishers and projects the file does not list are removed only with ``--prune``.
Applying takes an advisory lock and checks, under it, that the database is still what the plan
was made from: a concurrent change aborts the apply, which changes nothing.
"""

from __future__ import annotations

import re
import tomllib
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from trustpub.providers import PROVIDERS
from trustpub.providers.rules import RegistrationError, quote
from trustpub.registry.audit import insert_audit
from trustpub.registry.publisherfields import FieldErrors, registration
from trustpub.registry.publishers import (
    NewPublisher,
    Publisher,
    add_project,
    add_publisher,
    check_project_name,
    list_projects,
    list_publishers,
    normalize_name,
    remove_publisher,
)

# The advisory lock of an apply: one at a time.
_LOCK = 0x7472757374707562
# Ids pinned on first use: a file that leaves one out keeps the pinned value.
_PINNED = ("owner_id", "repository_id", "namespace_id", "project_id")


class FileErrors(Exception):
    """The file cannot be applied: one line per error, each with the file's line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class Conflict(Exception):
    """Another apply holds the lock, or the database changed since the plan."""


@dataclass(frozen=True)
class Wanted:
    line: int
    new: NewPublisher
    projects: frozenset[str]  # normalized


@dataclass(frozen=True)
class Desired:
    projects: dict[str, str]  # normalized -> name as written
    publishers: dict[str, Wanted]  # unique key -> wanted


@dataclass
class Plan:
    steps: list[tuple[str, str, Any]] = field(default_factory=list)  # (verb, text, argument)

    def lines(self) -> list[str]:
        return [f"{verb} {text}" for verb, text, _ in self.steps]

    @property
    def empty(self) -> bool:
        return not self.steps


def _table_lines(text: str, table: str) -> list[int]:
    return [n for n, line in enumerate(text.splitlines(), 1) if re.match(rf"\s*\[\[\s*{table}\s*\]\]", line)]


def _key_line(text: str, start: int, key: str) -> int:
    """The line of ``key = ...`` in the table whose header is line ``start``, else ``start``."""
    lines = text.splitlines()
    for n in range(start, len(lines)):  # the lines after the header (0-based: start is the next)
        if re.match(r"\s*\[", lines[n]):
            break
        if re.match(rf"\s*\"?{re.escape(key)}\"?\s*=", lines[n]):
            return n + 1
    return start


def parse(text: str, *, registrant: str) -> Desired:
    """The file's projects and publishers, checked.

    Raises:
        FileErrors: every error, each with its line.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FileErrors([f"line {getattr(exc, 'lineno', '?')}: {exc}"]) from None
    errors = [
        f"line {_key_line(text, 1, key)}: {quote(key)} is not a table of the file (project, publisher)"
        for key in sorted(set(doc) - {"project", "publisher"})
    ]
    raw_projects, raw_publishers = doc.get("project", []), doc.get("publisher", [])
    if not isinstance(raw_projects, list) or not isinstance(raw_publishers, list):
        raise FileErrors(
            [*errors, "line 1: project and publisher are arrays of tables ([[project]], [[publisher]])"]
        )
    projects = _projects(text, raw_projects, errors)
    publishers = _publishers(text, raw_publishers, projects, registrant, errors)
    if errors:
        raise FileErrors(errors)
    return Desired(projects, publishers)


def _projects(text: str, entries: list[Any], errors: list[str]) -> dict[str, str]:
    projects: dict[str, str] = {}
    lines = _table_lines(text, "project")
    for i, entry in enumerate(entries):
        line = lines[i] if i < len(lines) else 1
        name = entry.get("name") if isinstance(entry, dict) else None
        extra = sorted(set(entry) - {"name"}) if isinstance(entry, dict) else []
        errors.extend(
            f"line {_key_line(text, line, k)}: {quote(k)} is not a field of a project" for k in extra
        )
        if not isinstance(name, str):
            errors.append(f'line {line}: a project needs name = "..."')
            continue
        try:
            normalized = normalize_name(name)
        except RegistrationError as exc:
            errors.append(f"line {_key_line(text, line, 'name')}: {exc}")
            continue
        if normalized in projects:
            errors.append(f"line {line}: project {quote(name)} is listed twice")
        projects[normalized] = check_project_name(name)
    return projects


def _publishers(
    text: str, entries: list[Any], projects: dict[str, str], registrant: str, errors: list[str]
) -> dict[str, Wanted]:
    publishers: dict[str, Wanted] = {}
    lines = _table_lines(text, "publisher")
    for i, entry in enumerate(entries):
        line = lines[i] if i < len(lines) else 1
        if isinstance(entry, dict) and "pending_project" in entry:
            where = _key_line(text, line, "pending_project")
            errors.append(f"line {where}: pending publishers are not kept in the file")
            continue
        try:
            reg = registration(entry, registrant=registrant)
        except FieldErrors as exc:
            errors.extend(f"line {_key_line(text, line, k)}: {k} {v}" for k, v in exc.errors.items())
            continue
        except RegistrationError as exc:
            errors.append(f"line {line}: {exc}")
            continue
        at = _key_line(text, line, "projects")
        if not _names_ok(reg.projects, at, errors):
            continue
        wanted = {normalize_name(name) for name in reg.projects}
        errors.extend(
            f"line {at}: project {quote(name)} is not listed as a [[project]]"
            for name in reg.projects
            if normalize_name(name) not in projects
        )
        if reg.new.unique_key in publishers:
            other = publishers[reg.new.unique_key].line
            errors.append(f"line {line}: the same publisher as the one at line {other}")
            continue
        publishers[reg.new.unique_key] = Wanted(line, reg.new, frozenset(wanted))
    return publishers


def _names_ok(names: list[str], line: int, errors: list[str]) -> bool:
    ok = True
    for name in names:
        try:
            check_project_name(name)
        except RegistrationError as exc:
            errors.append(f"line {line}: {exc}")
            ok = False
    return ok


def _clean(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if v not in (None, "", [])}


def _spec_change(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The spec to store, if the file's differs from the stored one; ids pinned on first use
    are kept when the file leaves them out.

    Raises:
        RegistrationError: the file names an id other than the pinned one.
    """
    new = dict(wanted)
    for key in _PINNED:
        have, want = current.get(key), new.get(key)
        if have is None:
            continue
        if want is None:
            new[key] = have
        elif want != have:
            raise RegistrationError(
                f"{key.replace('_', ' ')} {want} is not the pinned one ({have}); remove the publisher "
                "(--prune without it) and list it again"
            )
    return None if _clean(new) == _clean(current) else new


async def plan(conn: asyncpg.Connection, desired: Desired, *, prune: bool) -> Plan:
    """What apply would do, in order.

    Raises:
        FileErrors: the file names an id other than the one a publisher pinned.
    """
    out = Plan()
    existing = {p.normalized_name: p for p in await list_projects(conn)}
    out.steps += [
        ("create project", name, name)
        for norm, name in sorted(desired.projects.items())
        if norm not in existing
    ]
    current = {p.unique_key: p for p in await list_publishers(conn)}
    for key, wanted in sorted(desired.publishers.items(), key=lambda kv: kv[1].line):
        out.steps += _publisher_steps(desired, wanted, current.get(key))
    if prune:
        out.steps += [
            ("remove", f"{have.provider} publisher {have.id} ({', '.join(have.projects)})", have.id)
            for key, have in current.items()
            if key not in desired.publishers
        ]
        out.steps += [
            ("delete project", project.name, project.id)
            for norm, project in sorted(existing.items())
            if norm not in desired.projects
        ]
    return out


def _publisher_steps(desired: Desired, wanted: Wanted, have: Publisher | None) -> list[tuple[str, str, Any]]:
    label = f"{wanted.new.provider} publisher (line {wanted.line})"
    if have is None:
        names = sorted(desired.projects[n] for n in wanted.projects)
        return [("create", f"{label} for {', '.join(names)}", (wanted.new, names))]
    steps: list[tuple[str, str, Any]] = []
    try:
        change = _spec_change(have.spec, wanted.new.spec)
    except RegistrationError as exc:
        raise FileErrors([f"line {wanted.line}: {exc}"]) from None
    if change is not None:
        steps.append(("change", f"{label} {have.id}: {_diff(have.spec, change)}", (have.id, change)))
    linked = {normalize_name(p) for p in have.projects}
    steps += [
        ("link", f"{label} {have.id} to {desired.projects[n]}", (have.id, n))
        for n in sorted(wanted.projects - linked)
    ]
    steps += [
        ("unlink", f"{label} {have.id} from {n}", (have.id, n)) for n in sorted(linked - wanted.projects)
    ]
    return steps


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if _clean({k: old.get(k)}) != _clean({k: new.get(k)}))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


async def apply(conn: asyncpg.Connection, desired: Desired, shown: Plan, *, prune: bool, actor: str) -> int:
    """Carry out ``shown`` in one transaction; returns the steps done.

    Raises:
        Conflict: another apply runs, or the database changed since ``shown`` was made.
    """
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK):
            raise Conflict("another apply is in progress; nothing was changed")
        again = await plan(conn, desired, prune=prune)
        if again.lines() != shown.lines():
            raise Conflict("the database changed since the plan was made; nothing was changed (plan again)")
        for verb, _, arg in shown.steps:
            await _step(conn, verb, arg, actor)
    return len(shown.steps)


async def _step(conn: asyncpg.Connection, verb: str, arg: Any, actor: str) -> None:  # noqa: ANN401
    if verb == "create project":
        await add_project(conn, arg, created_by=actor)
    elif verb == "create":
        new, names = arg
        await add_publisher(conn, new, names)
    elif verb == "change":
        pid, spec = arg
        old = await conn.fetchval("SELECT spec FROM publishers WHERE id = $1", uuid.UUID(pid))
        await conn.execute("UPDATE publishers SET spec = $2 WHERE id = $1", uuid.UUID(pid), spec)
        await insert_audit(
            conn,
            "publisher.changed",
            publisher_id=pid,
            outcome="ok",
            detail={"old": old, "new": spec, "by": actor},
        )
    elif verb in {"link", "unlink"}:
        pid, norm = arg
        project_id = await conn.fetchval("SELECT id FROM projects WHERE normalized_name = $1", norm)
        sql = (
            "INSERT INTO publisher_projects (publisher_id, project_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            if verb == "link"
            else "DELETE FROM publisher_projects WHERE publisher_id = $1 AND project_id = $2"
        )
        await conn.execute(sql, uuid.UUID(pid), project_id)
        await insert_audit(
            conn,
            f"publisher.{verb}ed",
            publisher_id=pid,
            outcome="ok",
            detail={"projects": [norm], "by": actor},
        )
    elif verb == "remove":
        await remove_publisher(conn, arg, actor=actor)
    else:  # delete project: its publishers were removed or unlinked by earlier steps
        await conn.execute("DELETE FROM projects WHERE id = $1", uuid.UUID(arg))
        await insert_audit(conn, "project.deleted", outcome="ok", detail={"project_id": arg, "by": actor})


# --- export -----------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:  # noqa: ANN401
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value)
    escaped = "".join(
        c if c.isprintable() and c not in '"\\' else ("\\" + c if c in '"\\' else f"\\u{ord(c):04x}")
        for c in text
    )
    return f'"{escaped}"'


def publisher_fields(p: Publisher) -> dict[str, Any]:
    """The file's fields of a stored publisher (what ``parse`` turns back into it)."""
    out: dict[str, Any] = {"provider": p.provider, "projects": p.projects, "issuer": p.issuer}
    return out | PROVIDERS[p.provider].registration_fields(p.spec)


async def export(conn: asyncpg.Connection) -> str:
    """The database's projects and publishers, as a file ``apply`` takes."""
    lines = ["# trustpub export: projects and trusted publishers (trustpub apply -f FILE)", ""]
    for p in await list_projects(conn):
        lines += ["[[project]]", f"name = {_toml_value(p.name)}", ""]
    for pub in await list_publishers(conn):
        lines += [f"# {pub.id}", "[[publisher]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in publisher_fields(pub).items()]
        lines.append("")
    return "\n".join(lines)
