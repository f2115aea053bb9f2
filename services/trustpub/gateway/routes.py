"""The gateway's route table: each endpoint declared once.

A :class:`Route` names its method and path, the handler, how the rate limit treats it, its
OpenAPI operation (openapi.py) and the setting that switches it off. The router
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


@dataclass(frozen=True, kw_only=True)
class Route:
    method: str
    path: str
    # The handler, of the gateway that serves the route.
    handler: Callable[[Gateway], Handler]
    operation: openapi.Operation
    limit: RateLimit = RateLimit.NONE
    # The setting that switches the route on; off, it answers 404 with ``switched_off``
    # (after the rate limit, before the handler, so nobody is asked).
    switch: Callable[[Settings], bool] | None = None
    switched_off: str = ""


MINT_TOKEN = "/_/oidc/mint-token"

ROUTES: tuple[Route, ...] = (
    Route(method="GET", path="/_/oidc/audience", handler=lambda gw: gw.audience, operation=openapi.AUDIENCE),
    Route(
        method="POST",
        path=MINT_TOKEN,
        handler=lambda gw: gw.mint_token,
        operation=openapi.MINT,
        limit=RateLimit.AUDITED,
    ),
    # PyPI's first path for GitHub's tokens, still used by older clients.
    Route(
        method="POST",
        path="/_/oidc/github/mint-token",
        handler=lambda gw: gw.mint_token,
        operation=openapi.MINT_LEGACY,
        limit=RateLimit.AUDITED,
    ),
    Route(
        method="POST",
        path="/_/oidc/burn-token",
        handler=lambda gw: gw.burn_token,
        operation=openapi.BURN,
        limit=RateLimit.COUNTED,
    ),
    Route(
        method="POST",
        path="/_/oidc/introspect",
        handler=lambda gw: gw.introspect,
        operation=openapi.INTROSPECT,
    ),
    Route(
        method="POST",
        path="/_/oidc/explain",
        handler=lambda gw: gw.explainer.handle,
        operation=openapi.EXPLAIN,
        limit=RateLimit.COUNTED,
        switch=lambda settings: settings.explain_enabled,
        switched_off="explain is switched off on this index",
    ),
    Route(method="GET", path="/_/oidc/jwks", handler=lambda gw: gw.jwks, operation=openapi.JWKS),
    Route(
        method="GET",
        path="/_/oidc/openapi.json",
        handler=lambda gw: gw.document,
        operation=openapi.DOCUMENT,
    ),
)

_LIMITS = {(route.method, route.path): route.limit for route in ROUTES}


def rate_limit(method: str, path: str) -> RateLimit:
    """How the rate limit treats a request to ``path`` (as sent: an unknown one is not limited)."""
    return _LIMITS.get((method, path), RateLimit.NONE)
