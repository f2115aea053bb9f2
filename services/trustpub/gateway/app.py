"""The gateway: trustpub's only HTTP entry for exchanges, PyPI's wire protocol.

``POST /_/oidc/mint-token`` sends one request down the pipeline (verifier, then registry,
which commits the mint record and its audit row, then minter); the minter's answer, or the
refusal of whichever stage refused, comes back to this service's inbox. The deadline and the
exchange id travel with the request, so no stage works for a client that gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from typing import cast

import structlog
from aiohttp import web

from trustpub.gateway import admin, limits, openapi
from trustpub.gateway.config import Settings
from trustpub.gateway.errors import (
    EXCHANGE_ID,
    exchange_ids,
    from_error,
    http_error,
    internal_error,
    json_response,
)
from trustpub.gateway.explain import Explainer
from trustpub.gateway.minterkeys import MinterKeys
from trustpub.gateway.outcome import Exchange, Outcomes
from trustpub.gateway.payload import token_from_body
from trustpub.gateway.routes import ROUTES, Handler, Route
from trustpub.messages import InvalidPayload, InvalidToken, NotEnabled, TrustpubError, Unavailable
from trustpub.messages.endpoints import (
    MINT_STATUS,
    TOKEN_BURN,
    TOKEN_KEYS,
    TOKEN_VERIFY,
)
from trustpub.messages.v1 import (
    BurnRequest,
    KeysReply,
    KeysRequest,
    MintStatusRequest,
    VerifyRequest,
)
from trustpub.runtime import Runtime, bound_port
from trustpub.runtime.events import ensure_stream

log = structlog.get_logger("trustpub.gateway")


class Gateway:
    """The HTTP handlers, holding the runtime they talk through."""

    def __init__(self, rt: Runtime, settings: Settings) -> None:
        self.rt = rt
        self.settings = settings
        self.minter_keys = MinterKeys(settings.minter_key_ids, self._fetch_keys)
        # How each exchange ends: its event, metrics and log line (outcome.py).
        self.outcomes = Outcomes(rt)
        self.explainer: Explainer = Explainer(rt, settings)
        # The per-client rate limit of the exchange endpoints (limits.py).
        self.guard = limits.ExchangeGuard(settings, self.outcomes.rate_limited, rt)

    # -- helpers ------------------------------------------------------------------------

    async def _body_token(self, request: web.Request) -> str:
        # Bounded in size (413) and time (408): limits.py.
        body = await limits.read_body(
            request, max_bytes=self.settings.max_body_bytes, timeout=self.settings.body_timeout
        )
        return token_from_body(body)

    def _deadline(self) -> float:
        """Unix seconds: it travels with the request to every stage."""
        return time.time() + self.settings.request_timeout

    async def _fetch_keys(self) -> KeysReply:
        return await self.rt.call(TOKEN_KEYS, KeysRequest(), deadline=self._deadline())

    # -- endpoints ----------------------------------------------------------------------

    async def audience(self, _: web.Request) -> web.Response:
        if not self.settings.enabled:
            return http_error(
                403,
                "trusted publishing functionality not enabled",
                message="Trusted publishing functionality not enabled",
            )
        return json_response({"audience": self.settings.audience})

    async def mint_token(self, request: web.Request) -> web.Response:
        ex = Exchange(request[EXCHANGE_ID])
        try:
            if not self.settings.enabled:
                raise NotEnabled("trusted publishing functionality not enabled")
            ex.token = await self._body_token(request)
            deadline = self._deadline()
            minted = await self.rt.call(
                TOKEN_VERIFY,
                VerifyRequest(token=ex.token),
                deadline=deadline,
                exchange_id=ex.id,
            )
            if time.time() > deadline:
                # This process was held up (stopped, starved) past the deadline: the mint
                # record's lease has ended and a retry may be granted it; never deliver now.
                raise Unavailable("the exchange's deadline passed before its answer could be sent")
        except TrustpubError as exc:
            return await self.outcomes.refuse(ex, exc)
        return await self.outcomes.deliver(request, ex, minted)

    async def burn_token(self, request: web.Request) -> web.Response:
        """Revoke a minted token early (uv calls this after its upload): 202 when done. The
        minter checks the token before the registry revokes its mint record."""
        try:
            token = await self._body_token(request)
            status = await self.rt.call(TOKEN_BURN, BurnRequest(token=token), deadline=self._deadline())
        except TrustpubError as exc:
            return from_error(exc)
        log.info("token_burned", mint_id=status.mint_id)
        return json_response({"message": "Accepted"}, status=202)

    async def introspect(self, request: web.Request) -> web.Response:
        """RFC 7662-style introspection of a minted token, for index servers: active only when
        a pinned key signed it for this deployment's issuer and audience, it has not expired,
        and its projects, publisher and expiry are those of its mint record, not revoked."""
        try:
            token = await self._body_token(request)
            try:
                claims = await self.minter_keys.verify(
                    token,
                    prefix=self.settings.token_prefix,
                    issuer=self.settings.token_issuer,
                    audience=self.settings.token_audience,
                )
            except InvalidToken:
                return json_response({"active": False})
            status = await self.rt.call(
                MINT_STATUS, MintStatusRequest(mint_id=str(claims.get("jti"))), deadline=self._deadline()
            )
        except TrustpubError as exc:
            return from_error(exc)
        bound = (
            status.known
            and not status.revoked
            and status.publisher_id == claims.get("sub")
            and status.projects == claims.get("projects")
            and status.expires_at == claims.get("exp")
        )
        if not bound:
            return json_response({"active": False})
        return json_response({"active": True, **claims})

    async def document(self, request: web.Request) -> web.Response:
        """The OpenAPI document of the routes this app serves (openapi.py)."""
        return openapi.handler(request.app, ROUTES)

    async def jwks(self, _: web.Request) -> web.Response:
        """The minter's public keys that this gateway is configured to trust, so an index
        verifies minted tokens offline."""
        try:
            document = await self.minter_keys.jwks()
        except TrustpubError as exc:
            return from_error(exc)
        max_age = int(self.settings.jwks_cache_seconds)
        return json_response(document, headers={"Cache-Control": f"public, max-age={max_age}"})


@web.middleware
async def error_shape(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error, including aiohttp's own 404/405/413, in PyPI's JSON shape; never a 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        desc = exc.text or exc.reason
        if exc.status == 413:
            desc = f"request body larger than {request.app[SETTINGS].max_body_bytes} bytes"
        resp = http_error(exc.status, desc.removeprefix(f"{exc.status}: "), message=exc.reason)
        if "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except InvalidPayload as exc:
        return from_error(exc)
    except Exception:  # the last line of defence of invariant 3 (DESIGN.md, "Invariants"): never a 500
        log.exception("gateway_handler_failed", path=request.path)
        return internal_error()


SETTINGS = web.AppKey("settings", Settings)


def _switched(route: Route, settings: Settings, handler: Handler) -> Handler:
    """``handler``, answering 404 while ``route``'s switch is off."""
    switch = route.switch
    if switch is None:
        return handler

    async def switched(request: web.Request) -> web.StreamResponse:
        if not switch.on(settings):
            return http_error(404, switch.off)
        return await handler(request)

    return switched


def http_app(gw: Gateway) -> web.Application:
    """The gateway's app: the routes of the table (routes.py), behind the exchange id, the
    error shape and the rate limit."""
    app = web.Application(
        client_max_size=gw.settings.max_body_bytes,
        middlewares=[exchange_ids, error_shape, gw.guard.middleware],
    )
    app[SETTINGS] = gw.settings
    for route in ROUTES:
        handler = _switched(route, gw.settings, route.handler(gw))
        if route.method == "GET":
            app.router.add_get(route.path, handler)  # and HEAD, as aiohttp does
        else:
            app.router.add_route(route.method, route.path, handler)
    return app


async def setup(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
    settings = cast("Settings", rt.settings)
    gw = Gateway(rt, settings)
    try:
        await asyncio.wait_for(ensure_stream(rt.nc.jetstream(), rt.subjects), 5)
    except Exception as exc:  # noqa: BLE001  (events are retried per publish; start regardless)
        log.warning("events_stream_unavailable", error=type(exc).__name__)
    ssl_ctx: ssl.SSLContext | None = None
    if settings.tls_cert and settings.tls_key:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    runner = limits.runner(http_app(gw), settings)  # header limits, slow-client timeouts
    await runner.setup()
    rt.before_drain.append(runner.cleanup)  # stop taking requests, finish the ones in flight
    # Then report what those last requests delivered, before the connection drains.
    rt.before_drain.append(gw.outcomes.events.flush)
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, settings.http_host, settings.http_port, ssl_context=ssl_ctx)
    await site.start()
    port = bound_port(runner, settings.http_port)
    rt.http_port = port
    log.info(
        "http_listening",
        host=settings.http_host,
        port=port,
        tls=ssl_ctx is not None,
        audience=settings.audience,
    )
    await admin.start(rt, stack, settings)  # the admin API, on its own port when one is set
