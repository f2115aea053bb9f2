"""The jwks service: owns the identity providers' key sets and shares them through KV.

Endpoint: ``<root>.jwks.refresh`` (:class:`RefreshRequest` -> :class:`SealedKeySet`). Key sets
live in the JetStream key-value bucket ``<root>_jwks`` (key:
:func:`trustpub.messages.keys.kv_key`), sealed for the verifiers, which watch it; a change of
an issuer's kids is published as ``<root>.events.jwks.rotated``. ``/readyz`` has one check per
enabled issuer ("keys <issuer>"): a usable set, within ``TRUSTPUB_KEY_STALENESS``, is in the
bucket.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import cast

from trustpub.jwks.config import Settings
from trustpub.jwks.fetch import Fetcher, new_session
from trustpub.jwks.keysets import KeySets
from trustpub.jwks.store import KvKeySetStore
from trustpub.messages.endpoints import JWKS_REFRESH, JWKS_ROTATED
from trustpub.messages.v1 import KeySetRotated, RefreshRequest, SealedKeySet
from trustpub.providers.issuers import IssuerRegistry
from trustpub.runtime import Runtime
from trustpub.runtime.events import StreamBounds, ensure_stream
from trustpub.runtime.keysets import open_bucket, seal
from trustpub.runtime.service import Setup

# Requests handled at once per endpoint: enough that a burst of refresh requests joins the
# one in-flight fetch instead of queueing behind it; each waits at most fetch_timeout.
ENDPOINT_CONCURRENCY = 64


class _RotationEvents:
    """Publishes ``jwks.rotated`` events; the stream is created on first use."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._bounds = StreamBounds.of(rt.settings)
        self._stream_ready = False

    async def __call__(self, event: KeySetRotated) -> None:
        if not self._stream_ready:
            await ensure_stream(self._rt.nc.jetstream(), self._rt.subjects, self._bounds)
            self._stream_ready = True
        await self._rt.publish_event(JWKS_ROTATED, event, event.event_id)


async def setup(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
    """Open the bucket and the HTTP client, register the endpoints, start refreshing."""
    await _setup(rt, stack, now=time.time)


def setup_with(*, now: Callable[[], float], keysets_to: Callable[[KeySets], None] | None = None) -> Setup:
    """:func:`setup` with another clock (unix seconds), so tests can move time; ``keysets_to``
    is handed the service's :class:`KeySets` (a test waits for :meth:`KeySets.settled`)."""

    async def configured(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
        await _setup(rt, stack, now=now, keysets_to=keysets_to)

    return configured


async def _setup(
    rt: Runtime,
    stack: contextlib.AsyncExitStack,
    *,
    now: Callable[[], float],
    keysets_to: Callable[[KeySets], None] | None = None,
) -> None:
    settings = cast("Settings", rt.settings)
    issuers = IssuerRegistry.load(settings.issuers_file, disabled_providers=settings.disabled_providers)
    js = rt.nc.jetstream()
    refused = rt.metrics.bus_refused
    store = KvKeySetStore(
        await open_bucket(js, rt.subjects.jwks_bucket),
        rt.seals,
        now=now,
        refused=lambda reason: refused.labels("bucket.jwks", reason).inc(),
    )
    rt.checks["jwks_bucket"] = store.ping
    session = await stack.enter_async_context(new_session(settings.fetch_timeout))
    fetcher = Fetcher(
        session,
        timeout=settings.fetch_timeout,
        max_bytes=settings.max_response_bytes,
        max_keys=settings.max_keys,
    )
    keysets = KeySets(
        issuers,
        fetcher=fetcher,
        store=store,
        registry=rt.registry,
        refresh_interval=settings.refresh_interval,
        refresh_cooldown=settings.refresh_cooldown,
        fetch_timeout=settings.fetch_timeout,
        key_staleness=settings.key_staleness,
        on_rotated=_RotationEvents(rt),
        now=now,
    )
    if keysets_to is not None:
        keysets_to(keysets)

    async def refresh(req: RefreshRequest) -> SealedKeySet:
        # Answered sealed, exactly as the bucket holds it: the verifier checks it the same way.
        return seal(rt.seals, await keysets.refresh(req.issuer, req.kid))

    rt.serve(JWKS_REFRESH, refresh, concurrency=ENDPOINT_CONCURRENCY)
    # Ready means: every enabled issuer has a usable (non-stale) set in the bucket, whichever
    # replica stored it. This is where "can trustpub verify every issuer's tokens" is
    # reported; the verifiers stay ready when one issuer has no keys (see verifier.app). The
    # endpoints serve whatever readiness says: NATS queue groups do not look at it.
    for issuer in keysets.issuers:
        if issuer.enabled:
            rt.checks[f"keys {issuer.issuer}"] = _usable(keysets, issuer.issuer)
    # Fetching starts now, in the background: starting does not wait for any issuer.
    await stack.enter_async_context(keysets.running())


def _usable(keysets: KeySets, issuer: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await keysets.usable(issuer)

    return check
