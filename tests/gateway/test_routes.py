"""The route table (gateway/routes.py) is what the router, the rate limiter and the OpenAPI
document serve, and every endpoint's log lines carry the request's exchange id."""

from __future__ import annotations

import re

import structlog
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from trustpub.gateway import admin, adminopenapi, openapi
from trustpub.gateway.app import Gateway, http_app
from trustpub.gateway.config import Settings
from trustpub.gateway.errors import EXCHANGE_ID_RESPONSE_HEADER
from trustpub.gateway.routes import ROUTES, RateLimit, rate_limit
from trustpub.runtime import Runtime, load

# This replica alone: the shared rate limit would need the bus.
PINNED = {"TRUSTPUB_MINTER_KEY_IDS": "a-minter-key-id", "TRUSTPUB_RATE_LIMIT_SHARED": "false"}
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _gateway(env: dict[str, str] | None = None) -> Gateway:
    settings = load(Settings, {**PINNED, **(env or {})})
    # A runtime that never connected: an answer that needed the bus could not be given.
    return Gateway(Runtime("gateway", settings), settings)


def _methods(pairs: list[tuple[str, str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for method, path in pairs:
        out.setdefault(path, set()).add(method)
    return out


def test_the_router_serves_the_table_and_the_document_lists_it() -> None:
    app = http_app(_gateway())
    served = _methods(openapi.served_routes(app))
    table = _methods([(r.method, r.path) for r in ROUTES])
    assert served == table
    doc = openapi.document(app, ROUTES)
    documented = {path: {m.upper() for m in ops} for path, ops in doc["paths"].items()}
    assert documented == table
    for route in ROUTES:
        assert doc["paths"][route.path][route.method.lower()] is route.operation
    # One operation id per route.
    ids = [r.operation["operationId"] for r in ROUTES]
    assert len(ids) == len(set(ids))


def test_the_rate_limit_reads_the_table() -> None:
    for route in ROUTES:
        assert rate_limit(route.method, route.path) is route.limit
    by_limit = {limit: {r.path for r in ROUTES if r.limit is limit} for limit in RateLimit}
    # The exchanges, whose first refusal is audited; burn and explain are counted only.
    assert by_limit[RateLimit.AUDITED] == {"/_/oidc/mint-token", "/_/oidc/github/mint-token"}
    assert by_limit[RateLimit.COUNTED] == {"/_/oidc/burn-token", "/_/oidc/explain"}
    # A method or path the table does not have is not limited (the router answers it).
    assert rate_limit("GET", "/_/oidc/mint-token") is RateLimit.NONE
    assert rate_limit("POST", "/_/oidc/mint-token/") is RateLimit.NONE


async def test_a_non_mint_endpoints_log_lines_carry_the_exchange_id() -> None:
    # Switched off (explain refuses without the bus), one request per second.
    limit = {"TRUSTPUB_RATE_LIMIT": "1", "TRUSTPUB_RATE_LIMIT_BURST": "1"}
    gw = _gateway({"TRUSTPUB_ENABLED": "false", **limit})
    async with TestClient(TestServer(http_app(gw))) as client:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            explained = await client.post("/_/oidc/explain", json={"token": "a.b.c"})
            limited = await client.post("/_/oidc/explain", json={"token": "a.b.c"})
    assert explained.status == 422
    assert limited.status == 429
    [refused] = [e for e in logs if e["event"] == "explain_refused"]
    assert HEX32.match(refused["exchange_id"])
    assert refused["exchange_id"] == explained.headers[EXCHANGE_ID_RESPONSE_HEADER]
    [over] = [e for e in logs if e["event"] == "rate_limited"]
    assert over["exchange_id"] == limited.headers[EXCHANGE_ID_RESPONSE_HEADER]
    assert over["exchange_id"] != refused["exchange_id"]


def test_the_admin_site_forwards_every_documented_operation() -> None:
    settings = load(Settings, PINNED)
    app = admin.admin_app(Runtime("gateway", settings), settings)
    served = _methods(openapi.served_routes(app))
    assert served == {adminopenapi.OPENAPI_PATH: {"GET"}, adminopenapi.PREFIX + "/{tail}": {"*"}}
    documented = set(adminopenapi.document()["paths"])
    assert documented
    assert all(path.startswith(adminopenapi.PREFIX + "/") for path in documented)
