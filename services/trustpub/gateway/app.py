"""The gateway: trustpub's only HTTP entry for exchanges, PyPI's wire protocol.

``POST /_/oidc/mint-token`` sends one request down the pipeline (verifier, then registry,
which commits the mint record and its audit row, then minter); the minter's answer, or the
refusal of whichever stage refused, comes back to this service's inbox. The deadline and the
exchange id travel with the request, so no stage works for a client that gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
import uuid
from typing import Any, cast

import structlog
from aiohttp import web
from prometheus_client import Counter, Histogram

from trustpub.gateway import admin, limits, openapi
from trustpub.gateway.config import Settings
from trustpub.gateway.errors import EXCHANGE_ID_RESPONSE_HEADER, error_response, from_error, json_response
from trustpub.gateway.events import EventPublisher
from trustpub.gateway.explain import EXPLAIN_PATH, Explainer
from trustpub.gateway.minterkeys import MinterKeys
from trustpub.gateway.payload import token_from_body
from trustpub.messages import InvalidPayload, InvalidToken, NotEnabled, TrustpubError, Unavailable
from trustpub.messages.endpoints import (
    MINT_STATUS,
    TOKEN_BURN,
    TOKEN_KEYS,
    TOKEN_VERIFY,
)
from trustpub.messages.v1 import (
    BurnRequest,
    ExchangeEvent,
    KeysReply,
    KeysRequest,
    MintStatusRequest,
    VerifyRequest,
)
from trustpub.runtime import Runtime, bound_port
from trustpub.runtime.events import ensure_stream
from trustpub.runtime.metrics import LATENCY_BUCKETS

log = structlog.get_logger("trustpub.gateway")


_HTTP_CODES = {404: "not-found", 405: "method-not-allowed", 413: "invalid-payload"}
# How long a 503 waits for its release to be stored before it is answered anyway.
SETTLE_TIMEOUT_S = 1.0


class Gateway:
    """The HTTP handlers, holding the runtime they talk through."""

    def __init__(self, rt: Runtime, settings: Settings) -> None:
        self.rt = rt
        self.settings = settings
        self.minter_keys = MinterKeys(settings.minter_key_ids, self._fetch_keys)
        self.exchanges = Counter(
            "trustpub_exchange_requests_total",
            "Token exchanges answered, by provider, outcome (minted, refused, unavailable) and error code.",
            ["provider", "outcome", "code"],
            registry=rt.registry,
        )
        self.duration = Histogram(
            "trustpub_exchange_duration_seconds",
            "Time from request to response of a token exchange, by outcome.",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=rt.registry,
        )
        self.events = EventPublisher(rt)
        # The per-client rate limit of the exchange endpoints (limits.py).
        self.guard = limits.ExchangeGuard(settings, self.events.record, rt)

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
            return error_response(
                "not-enabled",
                "trusted publishing functionality not enabled",
                status=403,
                message="Trusted publishing functionality not enabled",
            )
        return json_response({"audience": self.settings.audience})

    async def mint_token(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        exchange_id = uuid.uuid4().hex
        token = ""
        with structlog.contextvars.bound_contextvars(exchange_id=exchange_id):
            try:
                if not self.settings.enabled:
                    raise NotEnabled("trusted publishing functionality not enabled")
                token = await self._body_token(request)
                deadline = self._deadline()
                minted = await self.rt.call(
                    TOKEN_VERIFY,
                    VerifyRequest(token=token),
                    deadline=deadline,
                    exchange_id=exchange_id,
                )
                if time.time() > deadline:
                    # This process was held up (stopped, starved) past the deadline: the mint
                    # record's lease has ended and a retry may be granted it; never deliver now.
                    raise Unavailable("the exchange's deadline passed before its answer could be sent")
            except TrustpubError as exc:
                return await self._refused(exc, exchange_id, token, started)
            provider = minted.provider or "unknown"
            response = json_response(
                {"success": True, "token": minted.token, "expires": minted.expires},
                headers={EXCHANGE_ID_RESPONSE_HEADER: exchange_id},
            )
            transport = request.transport
            try:
                if transport is None or transport.is_closing():
                    raise ConnectionResetError
                await response.prepare(request)
                await response.write_eof()
            except (ConnectionError, RuntimeError):
                # Not delivered: release the record, so that the client's retry gets it.
                gone = Unavailable("the client hung up before its answer was sent")
                gone.context.update(issuer=minted.issuer, provider=provider)
                await self.events.settle(
                    self._failure_event(exchange_id, token, gone, "unavailable"), timeout=SETTLE_TIMEOUT_S
                )
                self.exchanges.labels(provider, "unavailable", "unavailable").inc()
                log.info("exchange_undelivered", mint_id=minted.mint_id, reason="client gone")
                return response
            # Written to the client: report the delivery (the record is single use from then on).
            self.events.record(
                ExchangeEvent(
                    event_id=uuid.uuid4().hex,
                    exchange_id=exchange_id,
                    at=time.time(),
                    outcome="succeeded",
                    issuer=minted.issuer,
                    provider=provider,
                    token_hash_prefix=_token_hash(token)[:16],
                    publisher_id=minted.publisher_id,
                    mint_id=minted.mint_id,
                )
            )
            self.exchanges.labels(provider, "minted", "").inc()
            elapsed = time.perf_counter() - started
            self.duration.labels("minted").observe(elapsed)
            log.debug(
                "exchange_succeeded",
                provider=provider,
                issuer=minted.issuer,
                publisher_id=minted.publisher_id,
                mint_id=minted.mint_id,
                projects=minted.projects,
                duration_ms=round(elapsed * 1000, 2),
            )
            return response

    @staticmethod
    def _failure_event(exchange_id: str, token: str, exc: TrustpubError, code: str) -> ExchangeEvent:
        """The audit record of an answer that delivered no token; it releases the exchange's
        mint record, if one was granted to it."""
        return ExchangeEvent(
            event_id=uuid.uuid4().hex,
            exchange_id=exchange_id,
            at=time.time(),
            outcome="failed",
            code=code,
            description=exc.description[:500],
            issuer=exc.context.get("issuer", ""),
            provider=exc.context.get("provider", "unknown"),
            token_hash_prefix=_token_hash(token)[:16] if token else "",
        )

    async def _refused(
        self, exc: TrustpubError, exchange_id: str, token: str, started: float
    ) -> web.Response:
        response = from_error(exc)
        outcome = "unavailable" if response.status == 503 else "refused"
        # Whose token it was: what the stage that refused it knew (verifier or registry).
        provider = exc.context.get("provider", "unknown")
        code = exc.code.value if response.status != 503 else "unavailable"
        self.exchanges.labels(provider, outcome, code).inc()
        elapsed = time.perf_counter() - started
        self.duration.labels(outcome).observe(elapsed)
        log.info(
            "exchange_failed",
            provider=provider,
            code=code,
            reason=exc.description[:300],
            duration_ms=round(elapsed * 1000, 2),
        )
        event = self._failure_event(exchange_id, token, exc, code)
        if response.status == 503 and token:
            # A grant may have been committed for this exchange: release it before the
            # client can retry (DESIGN.md, "Exactly once, as the publisher sees it").
            await self.events.settle(event, timeout=SETTLE_TIMEOUT_S)
        else:
            self.events.record(event)
        response.headers[EXCHANGE_ID_RESPONSE_HEADER] = exchange_id
        return response

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

    async def jwks(self, _: web.Request) -> web.Response:
        """The minter's public keys that this gateway is configured to trust, so an index
        verifies minted tokens offline."""
        try:
            document = await self.minter_keys.jwks()
        except TrustpubError as exc:
            return from_error(exc)
        max_age = int(self.settings.jwks_cache_seconds)
        return json_response(document, headers={"Cache-Control": f"public, max-age={max_age}"})


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@web.middleware
async def error_shape(request: web.Request, handler: Any) -> web.StreamResponse:  # noqa: ANN401
    """Every error, including aiohttp's own 404/405/413, in PyPI's JSON shape; never a 500."""
    try:
        return cast("web.StreamResponse", await handler(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "invalid-request")
        desc = exc.text or exc.reason
        if exc.status == 413:
            desc = f"request body larger than {request.app[SETTINGS].max_body_bytes} bytes"
        resp = error_response(
            code, desc.removeprefix(f"{exc.status}: "), status=exc.status, message=exc.reason
        )
        if "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except InvalidPayload as exc:
        return from_error(exc)
    except Exception:  # the last line of defence of invariant 3 (DESIGN.md, "Invariants"): never a 500
        log.exception("gateway_handler_failed", path=request.path)
        return error_response(
            "unavailable", "internal error; try again", status=503, headers={"Retry-After": "1"}
        )


SETTINGS = web.AppKey("settings", Settings)


def http_app(gw: Gateway) -> web.Application:
    app = web.Application(
        client_max_size=gw.settings.max_body_bytes, middlewares=[error_shape, gw.guard.middleware]
    )
    app[SETTINGS] = gw.settings
    app.router.add_get("/_/oidc/audience", gw.audience)
    for path in sorted(limits.MINT_PATHS):
        app.router.add_post(path, gw.mint_token)
    app.router.add_post("/_/oidc/burn-token", gw.burn_token)
    app.router.add_post("/_/oidc/introspect", gw.introspect)
    app.router.add_get("/_/oidc/jwks", gw.jwks)
    app.router.add_get(openapi.OPENAPI_PATH, openapi.serve)
    app.router.add_post(EXPLAIN_PATH, Explainer(gw.rt, gw.settings).handle)
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
    rt.before_drain.append(gw.events.flush)
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
