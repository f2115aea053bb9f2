"""The verifier service: the first stage of the exchange and of explain.

``token.verify`` and ``token.explain`` (callers: the gateway) verify the OIDC token and hand
the verified token, sealed, to the registry's ``publisher.match`` or ``publisher.explain``,
which answers the gateway; a refusal answers the gateway directly. Keys come from the sealed
entries of the key-value bucket, kept in memory.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import cast

from trustpub.messages import Unavailable
from trustpub.messages.endpoints import JWKS_REFRESH, TOKEN_EXPLAIN, TOKEN_VERIFY
from trustpub.messages.keys import kv_key
from trustpub.messages.v1 import ExplainRequest, KeySet, MatchRequest, RefreshRequest, VerifyRequest
from trustpub.providers.issuers import IssuerRegistry
from trustpub.runtime import Forward, Runtime, current_delivery
from trustpub.runtime.keysets import KeySetRefused, open_sealed
from trustpub.runtime.service import Setup
from trustpub.verifier.config import Settings
from trustpub.verifier.feed import BucketFeed
from trustpub.verifier.keys import KeyCache
from trustpub.verifier.metrics import VerifierMetrics
from trustpub.verifier.verify import Verifier

# The initial load of the bucket must finish before the service reports ready; a bucket
# holds one small entry per issuer, so this is generous.
KV_LOAD_TIMEOUT_S = 15.0


async def setup(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
    """Load the key sets from the bucket, keep watching it, serve ``token.verify``."""
    await _setup(rt, stack, now=time.time)


def setup_with(*, now: Callable[[], float]) -> Setup:
    """:func:`setup` with another clock for key-set ages (unix seconds), so tests can move
    time past the staleness bound instead of waiting. Token times (exp, iat, nbf) stay on the
    real clock: jwcrypto checks them against it too."""

    async def configured(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
        await _setup(rt, stack, now=now)

    return configured


async def _setup(rt: Runtime, stack: contextlib.AsyncExitStack, *, now: Callable[[], float]) -> None:
    settings = cast("Settings", rt.settings)
    issuers = IssuerRegistry.load(settings.issuers_file, disabled_providers=settings.disabled_providers)
    metrics = VerifierMetrics(rt.registry)

    refused = rt.metrics.bus_refused

    def refuse(reason: str) -> None:
        refused.labels("bucket.jwks", reason).inc()

    async def refresh(issuer: str, kid: str) -> KeySet:
        sealed = await rt.call(
            JWKS_REFRESH,
            RefreshRequest(issuer=issuer, kid=kid),
            deadline=time.time() + settings.refresh_timeout,
        )
        try:
            return open_sealed(rt.seals, kv_key(issuer), sealed, now=now)
        except KeySetRefused as exc:
            refuse(exc.reason)
            raise Unavailable(f"the answer to the refresh of {issuer}'s keys was refused: {exc}") from None

    cache = KeyCache(issuers, refresh=refresh, metrics=metrics, max_age=settings.key_staleness, now=now)
    feed = BucketFeed(rt.nc.jetstream(), rt.subjects.jwks_bucket, cache, rt.seals, refuse)
    stack.push_async_callback(feed.stop)
    await feed.start(timeout=KV_LOAD_TIMEOUT_S)

    async def keys_ready() -> bool:
        return feed.healthy

    rt.checks["keys"] = keys_ready
    # Per issuer, a usable (non-stale) key set: reported, but not a readiness condition. The
    # verifier is fit for work once NATS and the initial load are fine; an issuer without
    # keys gets 503 for its own tokens while every other issuer keeps verifying, and taking
    # every replica out of rotation for it would turn one provider's outage into everyone's.
    # "Every issuer has a usable key set" is the jwks service's readiness.
    for issuer in issuers:
        if issuer.enabled:
            rt.advisories[f"keys {issuer.issuer}"] = _usable(cache, issuer.issuer)
    verifier = Verifier(settings, issuers, cache, metrics=metrics)

    def exchange_id() -> str:
        delivery = current_delivery()
        return delivery.exchange_id if delivery is not None else ""

    async def verify(req: VerifyRequest) -> Forward[MatchRequest]:
        return Forward(MatchRequest(exchange_id=exchange_id(), token=await verifier.verify(req.token)))

    async def explain(req: VerifyRequest) -> Forward[ExplainRequest]:
        return Forward(ExplainRequest(exchange_id=exchange_id(), token=await verifier.verify(req.token)))

    rt.serve(TOKEN_VERIFY, verify, concurrency=settings.concurrency)
    rt.serve(TOKEN_EXPLAIN, explain, concurrency=settings.concurrency)


def _usable(cache: KeyCache, issuer: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return cache.usable(issuer)

    return check
