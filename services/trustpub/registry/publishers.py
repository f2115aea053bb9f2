"""Projects and trusted publishers: the operations the CLI, the admin API and publishers
files use (add, list, remove), and the one check of a project name.

Functions here take an asyncpg connection and do one thing in one transaction; they raise
:class:`RegistrationError` or :class:`NotFound` for input that cannot be applied, and let
database errors through (the caller decides whether that is a 503 or an exit code).
"""

from __future__ import annotations

import re
import string
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from trustpub.providers import PROVIDERS
from trustpub.providers.base import Provider
from trustpub.providers.rules import (
    RegistrationError,
    Spec,
    describe_char,
    first_non_ascii,
    quote,
)
from trustpub.registry.audit import insert_audit

_PROJECT_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_NAME_RULE = (
    "project names are ASCII letters, digits, '.', '_' and '-', starting and ending with a letter "
    "or digit (PEP 508)"
)


class NotFound(LookupError):
    """A project or publisher named in the request does not exist; the message says which."""


def needs_confirmation(provider: str, spec: Spec) -> bool:
    """A GitHub or GitLab publisher registered without its owner's id mints only once an
    operator confirmed the id its first token pinned (DESIGN.md, "Owners are confirmed")."""
    rules = PROVIDERS.get(provider)
    return rules is not None and rules.owner_open(spec)


def check_project_name(name: str) -> str:
    """The name without surrounding ASCII whitespace, if it is a valid project name.

    The one check of a project name, wherever one comes in: ``project add``, ``--project``,
    ``--pending-project``, lookups. A name with any other character is refused, never folded
    (DESIGN.md, "Names are ASCII").

    Raises:
        RegistrationError: it is not valid; the message names the offending character.
    """
    name = name.strip(string.whitespace)
    if _PROJECT_NAME.fullmatch(name):
        return name
    if not name:
        raise RegistrationError(f"a project name is required: {_NAME_RULE}")
    non_ascii = first_non_ascii(name)
    if non_ascii is not None:
        why = f"{non_ascii} is not ASCII"
    else:
        position, c = next(
            ((i, c) for i, c in enumerate(name, 1) if not (c.isalnum() or c in "._-")), (0, "")
        )
        why = (
            f"{describe_char(c)} at position {position} is not allowed"
            if c
            else "it must start and end with a letter or digit"
        )
    raise RegistrationError(f"project name {quote(name)} is not valid: {why}; {_NAME_RULE}")


def normalize_name(name: str) -> str:
    """PEP 503 normalization of a project name, checked first (:func:`check_project_name`).

    Raises:
        RegistrationError: the name is not valid.
    """
    return re.sub(r"[-_.]+", "-", check_project_name(name)).lower()


# --- records ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    name: str
    normalized_name: str
    created_at: datetime
    created_by: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "normalized_name": self.normalized_name,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }


@dataclass(frozen=True, slots=True)
class Publisher:
    id: str
    provider: str
    issuer: str
    lookup_key: str
    unique_key: str
    spec: dict[str, Any]
    environment: str
    registrant: str
    created_at: datetime
    projects: list[str] = field(default_factory=list)
    # Mints nothing until an operator confirms its owner's id (``trustpub publisher confirm``).
    needs_confirmation: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "provider": self.provider,
            "issuer": self.issuer,
            "spec": self.spec,
            "environment": self.environment,
            "registrant": self.registrant,
            "created_at": self.created_at.isoformat(),
            "projects": self.projects,
            "needs_confirmation": self.needs_confirmation,
        }


def _project(row: Mapping[str, Any]) -> Project:
    return Project(
        id=str(row["id"]),
        name=row["name"],
        normalized_name=row["normalized_name"],
        created_at=row["created_at"],
        created_by=row["created_by"],
    )


def _publisher(row: Mapping[str, Any]) -> Publisher:
    return Publisher(
        id=str(row["id"]),
        provider=row["provider"],
        issuer=row["issuer"],
        lookup_key=row["lookup_key"],
        unique_key=row["unique_key"],
        spec=dict(row["spec"]),
        environment=row["environment"],
        registrant=row["registrant"],
        created_at=row["created_at"],
        projects=list(row["projects"]),
        needs_confirmation=row["needs_confirmation"],
    )


_PUBLISHER_COLUMNS = """
    p.id, p.provider, p.issuer, p.lookup_key, p.unique_key, p.spec, p.environment, p.registrant,
    p.created_at, p.needs_confirmation,
    ARRAY(SELECT pr.name FROM publisher_projects pp JOIN projects pr ON pr.id = pp.project_id
          WHERE pp.publisher_id = p.id ORDER BY pr.normalized_name) AS projects
"""


def parse_id(value: str, what: str = "publisher id") -> uuid.UUID:
    """A UUID given by a person.

    Raises:
        RegistrationError: not a UUID.
    """
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise RegistrationError(f"{what} {quote(value)} is not a UUID") from None


# --- projects -----------------------------------------------------------------------------


async def add_project(conn: asyncpg.Connection, name: str, *, created_by: str = "") -> Project:
    """Add a project (audited as ``project.created``).

    Raises:
        RegistrationError: the name is not a valid project name, or the project (by its
            normalized name) exists already.
    """
    name = check_project_name(name)
    async with conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO projects (name, normalized_name, created_by) VALUES ($1, $2, $3) "
            "ON CONFLICT (normalized_name) DO NOTHING RETURNING *",
            name,
            normalize_name(name),
            created_by,
        )
        if row is None:
            existing = await conn.fetchval(
                "SELECT name FROM projects WHERE normalized_name = $1", normalize_name(name)
            )
            raise RegistrationError(f"project {quote(name)} exists already (as {quote(existing)})")
        project = _project(row)
        await insert_audit(
            conn, "project.created", outcome="ok", detail={"project": project.name, "by": created_by}
        )
    return project


async def list_projects(conn: asyncpg.Connection) -> list[Project]:
    rows = await conn.fetch("SELECT * FROM projects ORDER BY normalized_name")
    return [_project(r) for r in rows]


# --- publishers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewPublisher:
    """A validated registration: the provider computed the keys and the spec."""

    provider: str
    issuer: str
    lookup_key: str
    unique_key: str
    spec: dict[str, Any]
    # Reconciles the request with an identical publisher that exists (see Provider.merge_spec).
    merge: Callable[[Spec, Spec], dict[str, Any]]
    registrant: str = ""

    @classmethod
    def of(cls, provider: Provider, issuer: str, spec: dict[str, Any], registrant: str = "") -> NewPublisher:
        """The registration of ``spec``, validated by ``provider``, for ``issuer``."""
        return cls(
            provider=provider.name,
            issuer=issuer,
            lookup_key=provider.spec_lookup_key(spec),
            unique_key=provider.unique_key(issuer, spec),
            spec=spec,
            merge=provider.merge_spec,
            registrant=registrant,
        )

    @property
    def needs_confirmation(self) -> bool:
        return needs_confirmation(self.provider, self.spec)


async def add_publisher(
    conn: asyncpg.Connection, new: NewPublisher, projects: Sequence[str]
) -> tuple[Publisher, bool]:
    """Register a publisher for ``projects``; returns it and whether it was created.

    An identical publisher (same unique key) is re-used and linked to the projects, as
    PyPI does; fields it left open that the request gives are pinned now.

    Raises:
        NotFound: a project does not exist.
        RegistrationError: no project given, or the identical publisher has other options.
    """
    if not projects:
        raise RegistrationError("name at least one project (--project NAME)")
    wanted = {normalize_name(p): p for p in projects}
    async with conn.transaction():
        found = await conn.fetch(
            "SELECT id, name, normalized_name FROM projects WHERE normalized_name = ANY($1::text[]) "
            "ORDER BY normalized_name",
            list(wanted),
        )
        missing = [name for norm, name in wanted.items() if norm not in {r["normalized_name"] for r in found}]
        if missing:
            first = missing[0]
            raise NotFound(
                f"project {quote(first)} does not exist; add it first with: trustpub project add {first}"
            )
        project_ids = [r["id"] for r in found]
        row = await conn.fetchrow(
            "INSERT INTO publishers (provider, issuer, lookup_key, unique_key, spec, environment, "
            "registrant, needs_confirmation) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            "ON CONFLICT (unique_key) DO NOTHING RETURNING id",
            new.provider,
            new.issuer,
            new.lookup_key,
            new.unique_key,
            new.spec,
            str(new.spec.get("environment") or ""),
            new.registrant,
            new.needs_confirmation,
        )
        created = row is not None
        if created:
            publisher_id = row["id"]
        else:
            existing = await conn.fetchrow(
                "SELECT id, spec FROM publishers WHERE unique_key = $1 FOR UPDATE", new.unique_key
            )
            publisher_id = existing["id"]
            fill = new.merge(existing["spec"], new.spec)
            if fill:
                await conn.execute(
                    "UPDATE publishers SET spec = spec || $2 WHERE id = $1", publisher_id, fill
                )
                await insert_audit(
                    conn,
                    "publisher.pinned",
                    publisher_id=publisher_id,
                    outcome="ok",
                    detail={f: {"old": existing["spec"].get(f), "new": v} for f, v in fill.items()}
                    | {"by": new.registrant},
                )
        linked = await conn.fetch(
            "INSERT INTO publisher_projects (publisher_id, project_id) SELECT $1, unnest($2::uuid[]) "
            "ON CONFLICT DO NOTHING RETURNING project_id",
            publisher_id,
            project_ids,
        )
        publisher = await _get_publisher(conn, publisher_id)
        linked_names = [r["name"] for r in found]
        if created:
            await insert_audit(
                conn,
                "publisher.created",
                publisher_id=publisher_id,
                outcome="ok",
                detail={
                    "provider": new.provider,
                    "issuer": new.issuer,
                    "spec": publisher.spec,
                    "projects": linked_names,
                    "needs_confirmation": publisher.needs_confirmation,
                    "by": new.registrant,
                },
            )
        elif linked:
            await insert_audit(
                conn,
                "publisher.linked",
                publisher_id=publisher_id,
                outcome="ok",
                detail={"projects": linked_names, "by": new.registrant},
            )
    return publisher, created


async def _get_publisher(conn: asyncpg.Connection, publisher_id: uuid.UUID) -> Publisher:
    row = await conn.fetchrow(f"SELECT {_PUBLISHER_COLUMNS} FROM publishers p WHERE p.id = $1", publisher_id)  # noqa: S608  (constant column list)
    if row is None:
        raise NotFound(f"no publisher with id {publisher_id}")
    return _publisher(row)


async def get_publisher(conn: asyncpg.Connection, publisher_id: str | uuid.UUID) -> Publisher:
    """Raises NotFound, or RegistrationError for an id that is not a UUID."""
    pid = publisher_id if isinstance(publisher_id, uuid.UUID) else parse_id(publisher_id)
    return await _get_publisher(conn, pid)


async def list_publishers(conn: asyncpg.Connection, *, project: str | None = None) -> list[Publisher]:
    """Every publisher, or those of one project, oldest first.

    Raises:
        NotFound: ``project`` does not exist.
    """
    if project is None:
        rows = await conn.fetch(f"SELECT {_PUBLISHER_COLUMNS} FROM publishers p ORDER BY p.created_at, p.id")  # noqa: S608
        return [_publisher(r) for r in rows]
    project_id = await conn.fetchval(
        "SELECT id FROM projects WHERE normalized_name = $1", normalize_name(project)
    )
    if project_id is None:
        raise NotFound(f"project {quote(project)} does not exist")
    rows = await conn.fetch(
        f"SELECT {_PUBLISHER_COLUMNS} FROM publishers p "  # noqa: S608  (constant column list)
        "WHERE EXISTS (SELECT 1 FROM publisher_projects pp "
        "WHERE pp.publisher_id = p.id AND pp.project_id = $1) "
        "ORDER BY p.created_at, p.id",
        project_id,
    )
    return [_publisher(r) for r in rows]


async def remove_publisher(conn: asyncpg.Connection, publisher_id: str, *, actor: str = "") -> Publisher:
    """Unlink a publisher from every project and delete it (audited as ``publisher.removed``).

    Tokens minted through it stay in ``mints``; introspection (``mint.status``) reports
    them as revoked from now on, since their publisher is gone.

    Raises:
        RegistrationError: the id is not a UUID.
        NotFound: no such publisher.
    """
    pid = parse_id(publisher_id)
    async with conn.transaction():
        publisher = await _get_publisher(conn, pid)
        await conn.execute("DELETE FROM publishers WHERE id = $1", pid)
        await insert_audit(
            conn,
            "publisher.removed",
            publisher_id=pid,
            outcome="ok",
            detail={
                "provider": publisher.provider,
                "issuer": publisher.issuer,
                "spec": publisher.spec,
                "projects": publisher.projects,
                "by": actor,
            },
        )
    return publisher
