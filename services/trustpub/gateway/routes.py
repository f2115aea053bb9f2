"""The gateway's route table: each endpoint declared once.

A :class:`Route` names its method and path, the handler, its OpenAPI operation (openapi.py),
how the rate limit treats it and the setting that switches it off, if any. The router
(``app.http_app``), the rate limiter (``limits.ExchangeGuard``) and the OpenAPI document
(``openapi.document``) all read :data:`ROUTES`; ``tests/gateway/test_routes.py`` checks that
they agree. A new endpoint is one line here (and its operation and handler).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from trustpub.gateway import openapi

if TYPE_CHECKING:
    from trustpub.gateway.app import Gateway
    from trustpub.gateway.config import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RateLimit(enum.Enum):
    """How the per-client rate limit (limits.py) treats a route."""

    # Not limited: introspection and the key set are for index servers, the audience and the
    # document for clients' discovery.
    NONE = "none"
    # Limited; a refusal is counted (trustpub_http_rate_limited_total) and answered 429.
    COUNTED = "counted"
    # Limited, and an exchange: the first refusal of a client's run of refusals is also audited
    # as a refused exchange (DESIGN.md, "Hostile input").
    AUDITED = "audited"


@dataclass(frozen=True)
class Switch:
    """The setting that switches a route on; off, the route answers 404 with ``off`` (after the
    rate limit, before the handler, so nobody is asked)."""

    on: Callable[[Settings], bool]
    off: str


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[[Gateway], Handler]  # of the gateway that serves the route
    operation: openapi.Operation
    limit: RateLimit = RateLimit.NONE
    switch: Switch | None = None


AUDITED, COUNTED = RateLimit.AUDITED, RateLimit.COUNTED
EXPLAIN = Switch(lambda settings: settings.explain_enabled, "explain is switched off on this index")

ROUTES: tuple[Route, ...] = (
    Route("GET", "/_/oidc/audience", lambda gw: gw.audience, openapi.AUDIENCE),
    Route("POST", "/_/oidc/mint-token", lambda gw: gw.mint_token, openapi.MINT, AUDITED),
    # PyPI's first path, for GitHub's tokens; older clients still use it.
    Route("POST", "/_/oidc/github/mint-token", lambda gw: gw.mint_token, openapi.MINT_LEGACY, AUDITED),
    Route("POST", "/_/oidc/burn-token", lambda gw: gw.burn_token, openapi.BURN, COUNTED),
    Route("POST", "/_/oidc/introspect", lambda gw: gw.introspect, openapi.INTROSPECT),
    Route("POST", "/_/oidc/explain", lambda gw: gw.explainer.handle, openapi.EXPLAIN, COUNTED, EXPLAIN),
    Route("GET", "/_/oidc/jwks", lambda gw: gw.jwks, openapi.JWKS),
    Route("GET", "/_/oidc/openapi.json", lambda gw: gw.document, openapi.DOCUMENT),
)

_LIMITS = {(route.method, route.path): route.limit for route in ROUTES}


def rate_limit(method: str, path: str) -> RateLimit:
    """How the rate limit treats a request to ``path`` (as sent: an unknown one is not limited)."""
    return _LIMITS.get((method, path), RateLimit.NONE)
