"""The gateway: trustpub's only HTTP entry for exchanges, PyPI's wire protocol.

``POST /_/oidc/mint-token`` asks the verifier, then the registry (one transaction: match,
claim the token id, record the mint and its audit row), then the minter; the token leaves
only after the registry committed. Each hop gets what is left of the request deadline.
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

from trustpub.gateway import limits, openapi
from trustpub.gateway.config import Settings
from trustpub.gateway.errors import EXCHANGE_ID_RESPONSE_HEADER, error_response, from_error
from trustpub.gateway.explain import EXPLAIN_PATH, Explainer
from trustpub.gateway.payload import token_from_body
from trustpub.messages import InvalidPayload, InvalidToken, NotEnabled, TrustpubError
from trustpub.messages.v1 import (
    ExchangeEvent,
    InspectReply,
    InspectRequest,
    KeysReply,
    KeysRequest,
    MatchRequest,
    MintedToken,
    MintGrant,
    MintRequest,
    MintStatus,
    MintStatusRequest,
    RevokeRequest,
    VerifiedToken,
    VerifyRequest,
)
from trustpub.runtime import Runtime
from trustpub.runtime.events import ensure_stream, publish
from trustpub.runtime.metrics import LATENCY_BUCKETS

log = structlog.get_logger("trustpub.gateway")


_HTTP_CODES = {404: "not-found", 405: "method-not-allowed", 413: "invalid-payload"}


class Gateway:
    """The HTTP handlers, holding the runtime they talk through."""

    def __init__(self, rt: Runtime, settings: Settings) -> None:
        self.rt = rt
        self.settings = settings
        self.subjects = rt.subjects
        self._js = rt.nc.jetstream()
        self._jwks: tuple[float, dict[str, Any]] | None = None
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
        self.events_lost = Counter(
            "trustpub_events_unpublished_total",
            "Exchange events that JetStream did not acknowledge after every retry.",
            registry=rt.registry,
        )
        # The per-client rate limit of the exchange endpoints (limits.py).
        self.guard = limits.ExchangeGuard(settings, self._record, rt.registry)

    # -- helpers ------------------------------------------------------------------------

    async def _body_token(self, request: web.Request) -> str:
        # Bounded in size (413) and time (408): limits.py.
        body = await limits.read_body(
            request, max_bytes=self.settings.max_body_bytes, timeout=self.settings.body_timeout
        )
        return token_from_body(body)

    def _remaining(self, deadline: float) -> float:
        return deadline - asyncio.get_running_loop().time()

    def _record(self, event: ExchangeEvent) -> None:
        """Publish the exchange's event in the background; retried, never blocking the reply."""

        async def send() -> None:
            for attempt in range(5):
                try:
                    await publish(
                        self._js, self.subjects.event("exchange", event.outcome), event, event.event_id
                    )
                except TrustpubError:
                    await asyncio.sleep(0.2 * 2**attempt)
                else:
                    return
            self.events_lost.inc()
            log.error("exchange_event_unpublished", event_id=event.event_id, outcome=event.outcome)

        self.rt.spawn(send())

    # -- endpoints ----------------------------------------------------------------------

    async def audience(self, _: web.Request) -> web.Response:
        if not self.settings.enabled:
            return error_response(
                "not-enabled",
                "trusted publishing functionality not enabled",
                status=403,
                message="Trusted publishing functionality not enabled",
            )
        return web.json_response({"audience": self.settings.audience})

    async def mint_token(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        exchange_id = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.request_timeout
        token = ""
        verified: VerifiedToken | None = None
        with structlog.contextvars.bound_contextvars(exchange_id=exchange_id):
            try:
                if not self.settings.enabled:
                    raise NotEnabled("trusted publishing functionality not enabled")
                token = await self._body_token(request)
                verified = await self.rt.request(
                    self.subjects.token_verify,
                    VerifyRequest(token=token),
                    VerifiedToken,
                    timeout=self._remaining(deadline),
                    exchange_id=exchange_id,
                )
                grant = await self.rt.request(
                    self.subjects.publisher_match,
                    MatchRequest(exchange_id=exchange_id, token=verified),
                    MintGrant,
                    timeout=self._remaining(deadline),
                    exchange_id=exchange_id,
                )
                minted = await self.rt.request(
                    self.subjects.token_mint,
                    MintRequest(grant=grant),
                    MintedToken,
                    timeout=self._remaining(deadline),
                    exchange_id=exchange_id,
                )
            except TrustpubError as exc:
                return self._refused(exc, exchange_id, token, verified, started)
            provider = verified.provider
            self.exchanges.labels(provider, "minted", "").inc()
            elapsed = time.perf_counter() - started
            self.duration.labels("minted").observe(elapsed)
            log.info(
                "exchange_succeeded",
                provider=provider,
                issuer=verified.issuer,
                publisher_id=grant.publisher_id,
                mint_id=grant.mint_id,
                projects=grant.projects,
                duration_ms=round(elapsed * 1000, 2),
            )
            self._record(
                ExchangeEvent(
                    event_id=uuid.uuid4().hex,
                    exchange_id=exchange_id,
                    at=time.time(),
                    outcome="succeeded",
                    issuer=verified.issuer,
                    provider=provider,
                    token_hash_prefix=verified.token_hash[:16],
                    publisher_id=grant.publisher_id,
                    mint_id=grant.mint_id,
                )
            )
            return web.json_response(
                {"success": True, "token": minted.token, "expires": minted.expires},
                headers={EXCHANGE_ID_RESPONSE_HEADER: exchange_id},
            )

    def _refused(
        self, exc: TrustpubError, exchange_id: str, token: str, verified: VerifiedToken | None, started: float
    ) -> web.Response:
        response = from_error(exc)
        outcome = "unavailable" if response.status == 503 else "refused"
        # Whose token it was: the verified claims, else what the verifier said when refusing.
        provider = verified.provider if verified else exc.context.get("provider", "unknown")
        issuer = verified.issuer if verified else exc.context.get("issuer", "")
        code = exc.code.value if response.status != 503 else "unavailable"
        self.exchanges.labels(provider, outcome, code).inc()
        elapsed = time.perf_counter() - started
        self.duration.labels(outcome).observe(elapsed)
        token_hash = (
            verified.token_hash
            if verified
            else (hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest() if token else "")
        )
        log.info(
            "exchange_failed",
            provider=provider,
            code=code,
            reason=exc.description[:300],
            duration_ms=round(elapsed * 1000, 2),
        )
        self._record(
            ExchangeEvent(
                event_id=uuid.uuid4().hex,
                exchange_id=exchange_id,
                at=time.time(),
                outcome="failed",
                code=code,
                description=exc.description[:500],
                issuer=issuer,
                provider=provider,
                token_hash_prefix=token_hash[:16],
            )
        )
        response.headers[EXCHANGE_ID_RESPONSE_HEADER] = exchange_id
        return response

    async def burn_token(self, request: web.Request) -> web.Response:
        """Revoke a minted token early (uv calls this after its upload): 202 when done."""
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout
        try:
            token = await self._body_token(request)
            claims = (
                await self.rt.request(
                    self.subjects.token_inspect,
                    InspectRequest(token=token),
                    InspectReply,
                    timeout=self._remaining(deadline),
                )
            ).claims
            await self.rt.request(
                self.subjects.mint_revoke,
                RevokeRequest(mint_id=str(claims["jti"])),
                MintStatus,
                timeout=self._remaining(deadline),
            )
        except TrustpubError as exc:
            return from_error(exc)
        log.info("token_burned", mint_id=claims["jti"])
        return web.json_response({"message": "Accepted"}, status=202)

    async def introspect(self, request: web.Request) -> web.Response:
        """RFC 7662-style introspection of a minted token, for index servers."""
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout
        try:
            token = await self._body_token(request)
            try:
                claims = (
                    await self.rt.request(
                        self.subjects.token_inspect,
                        InspectRequest(token=token),
                        InspectReply,
                        timeout=self._remaining(deadline),
                    )
                ).claims
            except InvalidToken:
                return web.json_response({"active": False})
            status = await self.rt.request(
                self.subjects.mint_status,
                MintStatusRequest(mint_id=str(claims["jti"])),
                MintStatus,
                timeout=self._remaining(deadline),
            )
        except TrustpubError as exc:
            return from_error(exc)
        if not status.known or status.revoked:
            return web.json_response({"active": False})
        return web.json_response({"active": True, **claims})

    async def jwks(self, _: web.Request) -> web.Response:
        """The minter's public keys, so an index verifies minted tokens offline."""
        now = time.monotonic()
        if self._jwks is None or now - self._jwks[0] > self.settings.jwks_cache_seconds:
            try:
                reply = await self.rt.request(
                    self.subjects.token_keys, KeysRequest(), KeysReply, timeout=self.settings.request_timeout
                )
            except TrustpubError as exc:
                return from_error(exc)
            self._jwks = (now, reply.jwks)
        max_age = int(self.settings.jwks_cache_seconds)
        return web.json_response(self._jwks[1], headers={"Cache-Control": f"public, max-age={max_age}"})


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
    except Exception:  # the last line of defence of invariant 3: never a 500
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
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, settings.http_host, settings.http_port, ssl_context=ssl_ctx)
    await site.start()
    server = site._server  # noqa: SLF001  (aiohttp has no public accessor for the bound port)
    sockets = getattr(server, "sockets", None)
    port = int(sockets[0].getsockname()[1]) if sockets else settings.http_port
    rt.http_port = port
    log.info(
        "http_listening",
        host=settings.http_host,
        port=port,
        tls=ssl_ctx is not None,
        audience=settings.audience,
    )
