"""The registry's PostgreSQL: the connection pool, and the operations on projects,
publishers and the audit trail that the CLI (and later the admin API) use.

Functions here take an asyncpg connection and do one thing in one transaction; they raise
:class:`RegistrationError` or :class:`NotFound` for input that cannot be applied, and let
database errors through (the caller decides whether that is a 503 or an exit code).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import string
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import structlog

from trustpub.messages import Unavailable
from trustpub.providers import PROVIDERS
from trustpub.providers.base import Provider
from trustpub.providers.rules import (
    RegistrationError,
    Spec,
    describe_char,
    first_non_ascii,
    quote,
)
from trustpub.runtime import current_delivery

log = structlog.get_logger("trustpub.registry.db")

UNAVAILABLE = "the registry database is unavailable"
# Seconds for which a successful statement stands in for a readiness ping.
PING_FRESH_S = 5.0

# Errors that mean "the database cannot answer now" (connection refused or lost, server
# shutting down or starting, a statement or client timeout, out of connections, a
# read-only standby after failover, a serialization failure): a 503 for the caller, never
# an internal error. Anything else from PostgreSQL is a bug.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # includes QueryCanceledError (statement_timeout)
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    # A connection the server just closed can be caught between the error message and
    # the end of the stream ("cannot switch to state ...; another operation is in progress").
    asyncpg.exceptions.InternalClientError,
)

# PEP 508's name: ASCII letters and digits, with ".", "_" and "-" inside. Explicit ASCII
# ranges and no IGNORECASE, so no other character can match (DESIGN.md, "Names are ASCII").
_PROJECT_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_NAME_RULE = (
    "project names are ASCII letters, digits, '.', '_' and '-', starting and ending with a letter "
    "or digit (PEP 508)"
)


class NotFound(LookupError):
    """A project or publisher named in the request does not exist; the message says which."""


_NUMERIC_ID = re.compile(r"[0-9]{1,20}")


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


def _dumps(value: Any) -> str:  # noqa: ANN401  (any JSON value)
    return orjson.dumps(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb in and out as Python objects (orjson)."""
    await conn.set_type_codec("jsonb", encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: nothing to reset.

    asyncpg's default reset runs ``RESET ALL; UNLISTEN *; ...`` on every release, a round
    trip per request; trustpub never changes session state (asyncpg still rolls back an
    open transaction before calling this).
    """
    del conn


async def connect(dsn: str, *, timeout: float = 5.0) -> asyncpg.Connection:
    """One connection with trustpub's codecs (the CLI's; services use :class:`Database`)."""
    conn = await asyncpg.connect(dsn, timeout=timeout, command_timeout=timeout * 4)
    await init_connection(conn)
    return conn


class Database:
    """An asyncpg pool that tolerates a database that is down when the service starts.

    The service starts and answers ``unavailable`` (and ``/readyz`` says not ready) until
    the pool could be created; a background task retries. Once created, asyncpg
    reconnects lost connections by itself.
    """

    def __init__(self, dsn: str, *, pool_size: int, timeout: float) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._retry: asyncio.Task[None] | None = None
        self._down_logged = False
        self._last_ok = -PING_FRESH_S
        # FIFO admission in front of the pool: asyncpg's queue lets a newcomer take a
        # released connection ahead of a waiter, which showed as a long p99 tail.
        self._slots = asyncio.Semaphore(pool_size)

    @property
    def pool_size(self) -> int:
        return self._pool_size

    async def start(self) -> None:
        """Create the pool now if the database answers, else keep trying in the background."""
        if not await self._try_create():
            self._retry = asyncio.create_task(self._retry_loop())

    async def _try_create(self) -> bool:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=min(2, self._pool_size),
                max_size=self._pool_size,
                timeout=self._timeout,
                command_timeout=self._timeout,
                server_settings={
                    "application_name": "trustpub-registry",
                    "statement_timeout": str(int(self._timeout * 1000)),
                    # A stalled client must not hold row locks for long.
                    "idle_in_transaction_session_timeout": str(int(self._timeout * 5000)),
                },
                init=init_connection,
                reset=_keep_session,
            )
        except (*OUTAGE_ERRORS, asyncpg.PostgresError) as exc:
            if not self._down_logged:
                log.warning("database_unavailable", error=type(exc).__name__, detail=str(exc))
                self._down_logged = True
            return False
        log.info("database_connected", pool_size=self._pool_size)
        return True

    async def _retry_loop(self) -> None:
        delay = 0.5
        while not await self._try_create():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), timeout=self._timeout * 2)
            except OUTAGE_ERRORS:  # includes TimeoutError
                self._pool.terminate()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; an outage, here or in the block, is :class:`Unavailable`.

        Raises:
            Unavailable: no pool yet, no connection within the timeout, or the database
                failed in a way that means "down" (see ``OUTAGE_ERRORS``).
        """
        if self._pool is None:
            raise Unavailable(UNAVAILABLE)
        # A request waits for a connection only while its caller still waits for the answer.
        delivery = current_delivery()
        wait = self._timeout if delivery is None else min(self._timeout, delivery.remaining)
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=max(wait, 0.0))
        except TimeoutError:
            raise Unavailable(UNAVAILABLE) from None
        try:
            try:
                wait = self._timeout if delivery is None else min(self._timeout, delivery.remaining)
                conn = await self._pool.acquire(timeout=max(wait, 0.001))
            except (*OUTAGE_ERRORS, asyncpg.PostgresError) as exc:
                log.warning("database_unavailable", error=type(exc).__name__, detail=str(exc))
                raise Unavailable(UNAVAILABLE) from exc
            try:
                yield conn
                self._last_ok = time.monotonic()
            except OUTAGE_ERRORS as exc:
                log.warning("database_unavailable", error=type(exc).__name__, detail=str(exc))
                # Never hand a possibly broken connection to the next request; the pool
                # opens a fresh one. (A connection that closed itself is detached already.)
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
                raise Unavailable(UNAVAILABLE) from exc
            finally:
                with contextlib.suppress(*OUTAGE_ERRORS):
                    await self._pool.release(conn, timeout=self._timeout)
        finally:
            self._slots.release()

    async def ping(self) -> bool:
        """Readiness: ``SELECT 1`` through the pool.

        A statement that succeeded in the last few seconds counts as a ping: under full
        load the check would otherwise queue behind the requests and time out, and a busy
        database is not a down one.
        """
        if self._pool is not None and time.monotonic() - self._last_ok < PING_FRESH_S:
            return True
        try:
            async with self.connection() as conn:
                return bool(await conn.fetchval("SELECT 1") == 1)
        except Unavailable:
            return False


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

# --- audit --------------------------------------------------------------------------------

INSERT_AUDIT = """
INSERT INTO audit_events (event_id, at, kind, exchange_id, publisher_id, mint_id, outcome, code, detail)
VALUES ($1, coalesce($2, now()), $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (event_id) DO NOTHING
"""


async def insert_audit(  # noqa: PLR0913  (one argument per column)
    conn: asyncpg.Connection,
    kind: str,
    *,
    exchange_id: str = "",
    publisher_id: str | uuid.UUID | None = None,
    mint_id: str | uuid.UUID | None = None,
    outcome: str = "",
    code: str = "",
    detail: Mapping[str, Any] | None = None,
    event_id: uuid.UUID | None = None,
    at: datetime | None = None,
) -> None:
    """Append one audit row (idempotent by ``event_id``, a fresh one by default)."""
    await conn.execute(
        INSERT_AUDIT,
        event_id or uuid.uuid4(),
        at,
        kind,
        exchange_id,
        _uuid_or_none(publisher_id),
        _uuid_or_none(mint_id),
        outcome,
        code,
        dict(detail or {}),
    )


def _uuid_or_none(value: str | uuid.UUID | None) -> uuid.UUID | None:
    if value is None or value == "":
        return None
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


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


def _pending(row: Mapping[str, Any]) -> PendingPublisher:
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
        pending = _pending(row)
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
    return [_pending(r) for r in rows]


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
        pending = _pending(row)
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
        removed = [_pending(r) for r in rows]
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


# --- confirming an owner's id ------------------------------------------------------------


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
_LAST_PIN = """
SELECT at, exchange_id FROM audit_events
WHERE publisher_id = $1 AND kind IN ('publisher.pinned', 'pending.pinned')
ORDER BY at DESC, id DESC LIMIT 1
"""


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
            found = await (_get_pending(conn, pid) if pending else _get_publisher(conn, pid))
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
        confirmed = await (_get_pending(conn, pid) if pending else _get_publisher(conn, pid))
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
    last = await conn.fetchrow(_LAST_PIN, pid)
    when = (
        f" at {last['at'].isoformat(timespec='seconds')} (exchange {last['exchange_id'] or '?'})"
        if last is not None
        else ""
    )
    return (
        f"publisher {pid} awaits confirmation: its first token pinned {what} {pinned} for {owner}{when}; "
        f"check that {pinned} is the account you expect, then run: trustpub publisher confirm {pid} "
        f"{_flag(field_name)} {pinned}"
    )


async def _get_pending(conn: asyncpg.Connection, pid: uuid.UUID) -> PendingPublisher:
    row = await conn.fetchrow("SELECT * FROM pending_publishers WHERE id = $1", pid)
    if row is None:
        raise NotFound(f"no publisher with id {pid}")
    return _pending(row)


# --- replay store -------------------------------------------------------------------------


async def purge_used_tokens(conn: asyncpg.Connection) -> int:
    """Delete used token ids whose retention has passed; never one still retained."""
    status: str = await conn.execute("DELETE FROM used_tokens WHERE expires_at < now()")
    return int(status.rsplit(" ", 1)[-1])


# --- audit listing ------------------------------------------------------------------------

# Rows listed at most in one call: the trail can be millions of rows.
MAX_AUDIT_LIST = 10_000


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One row of the audit trail. ``detail`` never holds a token: at most a prefix of its hash."""

    id: int
    at: datetime
    kind: str
    outcome: str
    code: str
    exchange_id: str
    publisher_id: str
    mint_id: str
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "kind": self.kind,
            "outcome": self.outcome,
            "code": self.code,
            "exchange_id": self.exchange_id,
            "publisher_id": self.publisher_id or None,
            "mint_id": self.mint_id or None,
            "issuer": self.detail.get("issuer", ""),
            "provider": self.detail.get("provider", ""),
            "reason": self.detail.get("description", ""),
            "token_hash_prefix": self.detail.get("token_hash_prefix", ""),
            "detail": self.detail,
        }


_LIST_AUDIT = """
SELECT id, at, kind, outcome, code, exchange_id, publisher_id, mint_id, detail
FROM audit_events
WHERE ($1::text IS NULL OR kind = $1)
  AND ($2::text IS NULL OR code = $2)
  AND ($3::timestamptz IS NULL OR at >= $3)
  AND ($4::text IS NULL OR exchange_id = $4)
ORDER BY at DESC, id DESC
LIMIT $5
"""


async def list_audit_events(  # noqa: PLR0913  (one argument per filter)
    conn: asyncpg.Connection,
    *,
    kind: str | None = None,
    code: str | None = None,
    since: datetime | None = None,
    exchange_id: str | None = None,
    limit: int = 50,
) -> list[AuditEvent]:
    """The newest audit rows first, filtered by kind, code, time and exchange id.

    Raises:
        RegistrationError: ``limit`` is not between 1 and :data:`MAX_AUDIT_LIST`.
    """
    if not 1 <= limit <= MAX_AUDIT_LIST:
        raise RegistrationError(f"limit must be between 1 and {MAX_AUDIT_LIST}, got {limit}")
    rows = await conn.fetch(_LIST_AUDIT, kind, code, since, exchange_id, limit)
    return [
        AuditEvent(
            id=int(r["id"]),
            at=r["at"],
            kind=r["kind"],
            outcome=r["outcome"],
            code=r["code"],
            exchange_id=r["exchange_id"],
            publisher_id=str(r["publisher_id"] or ""),
            mint_id=str(r["mint_id"] or ""),
            detail=dict(r["detail"] or {}),
        )
        for r in rows
    ]
