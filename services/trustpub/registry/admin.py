"""The admin API's logic, in the registry (DESIGN.md, "The admin API").

The gateway's admin listener hands each HTTP call over as one sealed ``admin.call``; here
the API token is checked (hash, expiry, revocation), then its scope against the operation,
then the operation runs with the CLI's own validation and database functions. Every change
and every refusal is audited with the token's id and name (``admin.call``, ``admin.refused``),
in the same transaction as the change. Answers are an HTTP status and a JSON body; input that
is not what an operation takes is a 422 naming the fields, never a 5xx.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog

from trustpub.messages.v1 import AdminReply, AdminRequest
from trustpub.providers.rules import RegistrationError, quote
from trustpub.registry import admintokens, ascode, mints, publishers
from trustpub.registry.admintokens import AdminToken
from trustpub.registry.audit import MAX_AUDIT_LIST, insert_audit, list_audit_events
from trustpub.registry.config import Settings
from trustpub.registry.pending import (
    PendingPublisher,
    add_pending_publisher,
    list_pending_publishers,
    pending_from_row,
    remove_pending_publisher,
)
from trustpub.registry.pool import Database
from trustpub.registry.publisherfields import FieldErrors, field_names, registration
from trustpub.registry.publishers import (
    NotFound,
    Project,
    Publisher,
    add_project,
    add_publisher,
    get_publisher,
    normalize_name,
    parse_id,
)

log = structlog.get_logger("trustpub.registry.admin")

MAX_BODY = 65536


_JSON_TYPES: dict[str, type] = {"string": str, "boolean": bool, "array": list}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers or {}
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or {}


# PostgreSQL's text and jsonb cannot hold U+0000: a value carrying one would fail its statement
# (a 503) instead of being refused (DESIGN.md, "Invariants", 3: a refusal is a 4xx).
NUL_REFUSED = "must not contain the character U+0000"


def _holds_nul(value: object) -> bool:
    """Whether a decoded JSON value has U+0000 in any string, key or element."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    return False


def _check_nul(req: AdminRequest) -> None:
    """Refuse a path or query parameter carrying U+0000 (see NUL_REFUSED)."""
    errors = {"path": NUL_REFUSED} if "\x00" in req.path else {}
    errors |= {k.replace("\x00", "\\u0000"): NUL_REFUSED for k, v in req.query.items() if _holds_nul([k, v])}
    if errors:
        raise ApiError(422, "invalid-request", f"the request {NUL_REFUSED}", errors)


def _forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def _json(status: int, value: Any) -> AdminReply:  # noqa: ANN401  (any JSON value)
    return AdminReply(status=status, body=orjson.dumps(value).decode())


def error_body(code: str, message: str, errors: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "errors": [{"field": k, "message": v} for k, v in (errors or {}).items()],
    }


@dataclass
class Call:
    """One call in progress: its token, its request, its connection."""

    token: AdminToken
    req: AdminRequest
    conn: asyncpg.Connection
    args: tuple[str, ...]
    settings: Settings

    def body(self) -> Any:  # noqa: ANN401  (any JSON value)
        if len(self.req.body) > MAX_BODY:
            raise ApiError(413, "too-large", f"request body larger than {MAX_BODY} bytes")
        try:
            value = orjson.loads(self.req.body or "null")
        except orjson.JSONDecodeError as exc:
            raise ApiError(422, "invalid-request", "the body is not JSON", {"body": str(exc)}) from None
        if _holds_nul(value):
            raise ApiError(422, "invalid-request", NUL_REFUSED, {"body": NUL_REFUSED})
        return value

    def object_body(self, fields: dict[str, str], *, required: tuple[str, ...] = ()) -> dict[str, Any]:
        """A JSON object with only ``fields`` (name: the JSON type), those in ``required`` given."""
        value = self.body()
        if not isinstance(value, dict):
            raise ApiError(
                422, "invalid-request", "the body must be a JSON object", {"body": "must be an object"}
            )
        errors = {k: "is not a field of this request" for k in value if k not in fields}
        for name, kind in fields.items():
            if name not in value:
                if name in required:
                    errors[name] = "is required"
            elif not isinstance(value[name], _JSON_TYPES[kind]):
                errors[name] = f"must be a{'n' if kind == 'array' else ''} {kind}"
        if errors:
            raise ApiError(422, "invalid-request", "the body has invalid fields", errors)
        return value

    def owns(self, names: list[str]) -> bool:
        """Whether the token may act on all of ``names`` (projects, by any spelling)."""
        if self.token.scope == "admin":
            return True
        if self.token.scope != "owner" or not names:
            return False
        try:
            return {normalize_name(n) for n in names} <= set(self.token.projects)
        except RegistrationError:
            return False

    def may_read(self, names: list[str]) -> bool:
        return self.token.scope in {"admin", "read"} or self.owns(names)

    def need_admin(self) -> None:
        if self.token.scope != "admin":
            raise _forbidden(f"this needs a token of scope admin; {self._which()}")

    def need_read_all(self) -> None:
        if self.token.scope not in {"admin", "read"}:
            raise _forbidden(f"this needs a token of scope admin or read; {self._which()}")

    def need_owner(self, names: list[str]) -> None:
        if not self.owns(names):
            listed = ", ".join(map(quote, names)) or "(none)"
            raise _forbidden(f"this token may not change project(s) {listed}; {self._which()}")

    def need_reader(self, names: list[str]) -> None:
        if not self.may_read(names):
            listed = ", ".join(map(quote, names)) or "(none)"
            raise _forbidden(f"this token may not read project(s) {listed}; {self._which()}")

    def _which(self) -> str:
        t = self.token
        return f"token {quote(t.name)} has scope {t.scope}" + (
            f" for {', '.join(t.projects)}" if t.projects else ""
        )

    @property
    def actor(self) -> str:
        return self.token.actor()


Operation = Callable[[Call], Awaitable[tuple[int, Any]]]


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return parse_id(value, what)
    except RegistrationError as exc:
        raise ApiError(404, "not-found", str(exc)) from None


# --- projects ---------------------------------------------------------------------------------


async def list_projects(call: Call) -> tuple[int, Any]:
    projects = await publishers.list_projects(call.conn)
    return 200, [p.to_json() for p in projects if call.may_read([p.name])]


async def create_project(call: Call) -> tuple[int, Any]:
    call.need_admin()
    body = call.object_body({"name": "string"}, required=("name",))
    project = await add_project(call.conn, body["name"], created_by=call.actor)
    return 201, project.to_json()


async def _project(call: Call) -> Project:
    name = call.args[0]
    try:
        norm = normalize_name(name)
    except RegistrationError as exc:
        raise ApiError(404, "not-found", str(exc)) from None
    for p in await publishers.list_projects(call.conn):
        if p.normalized_name == norm:
            return p
    raise ApiError(404, "not-found", f"project {quote(name)} does not exist")


async def show_project(call: Call) -> tuple[int, Any]:
    call.need_reader([call.args[0]])
    project = await _project(call)
    listed = await publishers.list_publishers(call.conn, project=project.name)
    return 200, project.to_json() | {"publishers": [p.to_json() for p in listed]}


async def delete_project(call: Call) -> tuple[int, Any]:
    call.need_admin()
    project = await _project(call)
    linked = await call.conn.fetchval(
        "SELECT count(*) FROM publisher_projects WHERE project_id = $1", uuid.UUID(project.id)
    )
    if linked:
        raise ApiError(
            409, "conflict", f"project {quote(project.name)} has {linked} publisher(s); remove them first"
        )
    await call.conn.execute("DELETE FROM projects WHERE id = $1", uuid.UUID(project.id))
    await insert_audit(
        call.conn, "project.deleted", outcome="ok", detail={"project": project.name, "by": call.actor}
    )
    return 200, {"deleted": project.to_json()}


# --- publishers ---------------------------------------------------------------------------------


async def list_publishers(call: Call) -> tuple[int, Any]:
    project = call.req.query.get("project")
    if project is None:
        listed = await publishers.list_publishers(call.conn)
        return 200, [p.to_json() for p in listed if call.may_read(p.projects)]
    call.need_reader([project])
    try:
        listed = await publishers.list_publishers(call.conn, project=project)
    except RegistrationError as exc:
        raise ApiError(422, "invalid-request", str(exc), {"project": str(exc)}) from None
    return 200, [p.to_json() for p in listed]


async def create_publisher(call: Call) -> tuple[int, Any]:
    body = call.body()
    # Scope first, on what the body names: a refusal says nothing about the body's validity.
    if isinstance(body, dict) and isinstance(body.get("pending_project"), str):
        call.need_admin()
    else:
        projects = body.get("projects") if isinstance(body, dict) else None
        names = [p for p in projects if isinstance(p, str)] if isinstance(projects, list) else []
        call.need_owner(names)
    try:
        reg = registration(body, registrant=call.actor)
    except FieldErrors as exc:
        raise ApiError(422, "invalid-request", "the body has invalid fields", exc.errors) from None
    except RegistrationError as exc:
        field = _field_of(str(body.get("provider")), str(exc))
        raise ApiError(422, "invalid-request", str(exc), {field: str(exc)}) from None
    if reg.pending_project is not None:
        settings = call.settings
        pending = await add_pending_publisher(
            call.conn,
            reg.new,
            reg.pending_project,
            ttl_days=settings.pending_ttl_days,
            max_per_registrant=settings.max_pending_per_registrant,
        )
        return 201, {"created": True, "pending": True, "publisher": pending.to_json()}
    publisher, created = await add_publisher(call.conn, reg.new, reg.projects)
    return (201 if created else 200), {"created": created, "publisher": publisher.to_json()}


def _field_of(provider: str, message: str) -> str:
    """The field a validation message is about: the CLI option it names, or its first word."""
    names = field_names(provider)
    for option in re.findall(r"--([a-z][a-z-]*)", message):
        if option.replace("-", "_") in names:
            return str(option.replace("-", "_"))
    first = message.split(" ", 1)[0].lower()
    return first if first in names else "body"


async def _publisher(call: Call) -> Publisher:
    try:
        return await get_publisher(call.conn, _uuid(call.args[0], "publisher id"))
    except NotFound as exc:
        raise ApiError(404, "not-found", str(exc)) from None


async def show_publisher(call: Call) -> tuple[int, Any]:
    publisher = await _publisher(call)
    call.need_reader(publisher.projects)
    return 200, publisher.to_json()


async def remove_publisher(call: Call) -> tuple[int, Any]:
    publisher = await _publisher(call)
    call.need_owner(publisher.projects)
    removed = await publishers.remove_publisher(call.conn, publisher.id, actor=call.actor)
    return 200, {"removed": removed.to_json()}


# --- pending publishers ---------------------------------------------------------------------------


async def list_pending(call: Call) -> tuple[int, Any]:
    pending = await list_pending_publishers(call.conn)
    return 200, [p.to_json() for p in pending if call.may_read([p.project_name])]


async def _pending(call: Call) -> PendingPublisher:
    pid = _uuid(call.args[0], "pending publisher id")
    row = await call.conn.fetchrow("SELECT * FROM pending_publishers WHERE id = $1", pid)
    if row is None:
        raise ApiError(404, "not-found", f"no pending publisher with id {pid}")
    return pending_from_row(row)


async def show_pending(call: Call) -> tuple[int, Any]:
    pending = await _pending(call)
    call.need_reader([pending.project_name])
    return 200, pending.to_json()


async def remove_pending(call: Call) -> tuple[int, Any]:
    pending = await _pending(call)
    call.need_admin()
    removed = await remove_pending_publisher(call.conn, pending.id, actor=call.actor)
    return 200, {"removed": removed.to_json()}


# --- audit and mints ------------------------------------------------------------------------------

_AUDIT_FILTERS = ("kind", "code", "since", "exchange_id", "limit", "refused")


async def list_audit(call: Call) -> tuple[int, Any]:
    call.need_read_all()
    q = call.req.query
    errors = {k: "is not a filter of the audit list" for k in q if k not in _AUDIT_FILTERS}
    since: datetime | None = None
    if "since" in q:
        try:
            since = datetime.fromisoformat(q["since"])
        except ValueError:
            errors["since"] = "must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"
        else:
            since = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
    limit = 50
    if "limit" in q:
        if not re.fullmatch(r"[0-9]{1,6}", q["limit"]) or not 1 <= int(q["limit"]) <= MAX_AUDIT_LIST:
            errors["limit"] = f"must be an integer from 1 to {MAX_AUDIT_LIST}"
        else:
            limit = int(q["limit"])
    kind = q.get("kind")
    if q.get("refused") not in {None, "true", "false"}:
        errors["refused"] = "must be true or false"
    elif q.get("refused") == "true":
        if kind not in {None, "exchange.failed"}:
            errors["refused"] = "lists exchange.failed records; it cannot be combined with kind"
        kind = "exchange.failed"
    if errors:
        raise ApiError(422, "invalid-request", "invalid filters", errors)
    events = await list_audit_events(
        call.conn, kind=kind, code=q.get("code"), since=since, exchange_id=q.get("exchange_id"), limit=limit
    )
    return 200, [e.to_json() for e in events]


async def revoke_mint(call: Call) -> tuple[int, Any]:
    mint_id = _uuid(call.args[0], "mint id")
    body = call.object_body({"reason": "string"}) if call.req.body else {}
    row = await call.conn.fetchrow("SELECT projects, revoked_at FROM mints WHERE id = $1", mint_id)
    if row is None:
        raise ApiError(404, "not-found", f"no minted token with id {mint_id}")
    call.need_owner(list(row["projects"]))
    reason = str(body.get("reason") or "revoked through the admin API")[:500]
    done = await mints.revoke_mint(call.conn, mint_id, reason, by=call.actor)
    assert done is not None  # noqa: S101  (found above, and mint records are never deleted)
    return 200, {"mint_id": str(mint_id), "revoked": True, "revoked_now": bool(done["revoked_now"])}


# --- publishers as code -------------------------------------------------------------------------------


async def export_file(call: Call) -> tuple[int, Any]:
    call.need_read_all()
    return 200, {"file": await ascode.export(call.conn)}


async def apply_file(call: Call) -> tuple[int, Any]:
    """``trustpub apply`` over the API (scope admin): the plan, and unless ``dry_run`` the
    changes; ``plan`` (a dry run's lines) makes it stop if the plan is no longer that one."""
    call.need_admin()
    body = call.object_body(
        {"file": "string", "dry_run": "boolean", "prune": "boolean", "plan": "array"}, required=("file",)
    )
    expected = body.get("plan")
    if expected is not None and not all(isinstance(x, str) for x in expected):
        raise ApiError(422, "invalid-request", "invalid plan", {"plan": "must be an array of strings"})
    prune = bool(body.get("prune", False))
    try:
        desired = ascode.parse(body["file"], registrant=call.actor)
        shown = await ascode.plan(call.conn, desired, prune=prune)
    except ascode.FileErrors as exc:
        raise ApiError(
            422,
            "invalid-request",
            "the file has errors; nothing was changed",
            {"file": "\n".join(exc.errors)},
        ) from None
    if expected is not None and expected != shown.lines():
        raise ApiError(409, "conflict", "the database changed since that plan was made; nothing was changed")
    done = 0
    if not body.get("dry_run", False) and not shown.empty:
        try:
            done = await ascode.apply(call.conn, desired, shown, prune=prune, actor=call.actor)
        except ascode.Conflict as exc:
            raise ApiError(409, "conflict", str(exc)) from None
    return 200, {"plan": shown.lines(), "applied": done}


# --- routing ----------------------------------------------------------------------------------------

_SEGMENT = r"([^/]+)"
ROUTES: tuple[tuple[str, re.Pattern[str], Operation], ...] = tuple(
    (method, re.compile(pattern.replace("{}", _SEGMENT)), op)
    for method, pattern, op in (
        ("GET", "/projects", list_projects),
        ("POST", "/projects", create_project),
        ("GET", "/projects/{}", show_project),
        ("DELETE", "/projects/{}", delete_project),
        ("GET", "/publishers", list_publishers),
        ("POST", "/publishers", create_publisher),
        ("GET", "/publishers/{}", show_publisher),
        ("DELETE", "/publishers/{}", remove_publisher),
        ("GET", "/pending", list_pending),
        ("GET", "/pending/{}", show_pending),
        ("DELETE", "/pending/{}", remove_pending),
        ("GET", "/audit", list_audit),
        ("POST", "/mints/{}/revoke", revoke_mint),
        ("GET", "/export", export_file),
        ("POST", "/apply", apply_file),
    )
)


# The query parameters each operation takes; any other is a 422 (never silently ignored).
_QUERY: dict[Any, tuple[str, ...]] = {list_publishers: ("project",)}


def _check_query(op: Operation, query: dict[str, str]) -> None:
    if op is list_audit:
        return  # it checks its filters itself, every error at once
    allowed = _QUERY.get(op, ())
    unknown = {k: "is not a parameter of this operation" for k in query if k not in allowed}
    if unknown:
        raise ApiError(422, "invalid-request", "unknown query parameters", unknown)


def route(method: str, path: str) -> tuple[Operation, tuple[str, ...]]:
    """The operation for a call.

    Raises:
        ApiError: 404 no such resource, 405 not with this method.
    """
    allowed = []
    for m, pattern, op in ROUTES:
        match = pattern.fullmatch(path)
        if match:
            if m == method:
                return op, match.groups()
            allowed.append(m)
    if allowed:
        raise ApiError(
            405,
            "method-not-allowed",
            f"{method} is not allowed here; allowed: {', '.join(allowed)}",
            headers={"Allow": ", ".join(allowed)},
        )
    raise ApiError(404, "not-found", f"no resource at {quote(path)}")


class Admin:
    """Serves ``admin.call``."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.db = database
        self.settings = settings

    async def handle(self, req: AdminRequest) -> AdminReply:
        """Check the token, then the operation; answer the call. Database outages raise
        :class:`~trustpub.messages.Unavailable` (the listener answers 503)."""
        async with self.db.connection() as conn:
            token: AdminToken | None = None
            try:
                _check_nul(req)
                op, args = route(req.method, req.path)
                try:
                    token = await admintokens.authenticate(conn, req.token)
                except admintokens.Refused as exc:
                    raise ApiError(401, "unauthenticated", str(exc)) from None
                _check_query(op, req.query)
                async with conn.transaction():
                    call = Call(token=token, req=req, conn=conn, args=args, settings=self.settings)
                    status, value = await op(call)
                    if req.method != "GET":
                        await insert_audit(
                            conn, "admin.call", outcome="ok", detail=self._detail(req, token, status)
                        )
                return _json(status, value)
            except ApiError as exc:
                return await self._refuse(conn, req, token, exc)
            except RegistrationError as exc:
                return await self._refuse(
                    conn, req, token, ApiError(422, "invalid-request", str(exc), {"body": str(exc)})
                )
            except NotFound as exc:
                return await self._refuse(conn, req, token, ApiError(404, "not-found", str(exc)))
            except asyncpg.exceptions.SerializationError:
                raise
            except asyncpg.exceptions.IntegrityConstraintViolationError as exc:
                conflict = ApiError(409, "conflict", f"a concurrent change conflicts: {type(exc).__name__}")
                return await self._refuse(conn, req, token, conflict)

    @staticmethod
    def _detail(req: AdminRequest, token: AdminToken | None, status: int) -> dict[str, Any]:
        path = req.path[:300].replace("\x00", "\\u0000")  # jsonb holds no U+0000 (NUL_REFUSED)
        detail: dict[str, Any] = {"method": req.method[:10], "path": path, "status": status}
        if token is not None:
            detail |= {"token_id": token.id, "token_name": token.name, "scope": token.scope}
        else:
            tid = admintokens.token_id(req.token)
            detail["token_id"] = str(tid) if tid else ""
        return detail

    async def _refuse(
        self, conn: asyncpg.Connection, req: AdminRequest, token: AdminToken | None, exc: ApiError
    ) -> AdminReply:
        if exc.status not in {404, 405} or token is not None:
            detail = self._detail(req, token, exc.status) | {"description": exc.message[:500]}
            await insert_audit(conn, "admin.refused", outcome="refused", code=exc.code, detail=detail)
        log.info("admin_refused", status=exc.status, code=exc.code, path=req.path[:200])
        reply = _json(exc.status, error_body(exc.code, exc.message, exc.errors))
        return AdminReply(status=reply.status, body=reply.body, headers=exc.headers)
