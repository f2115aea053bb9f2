"""The rate limit across gateway replicas: per-client levels shared in a JetStream KV bucket.

Every replica keeps its own token bucket per client (:class:`trustpub.gateway.limits.RateLimiter`):
exact, and no I/O on the hot path. A client that has spent half its burst on a replica becomes
*shared* there: from then on the replica adds what it admits for that client to ``pending``,
and every ``interval`` seconds a background task folds the pending counts into the client's
entry in the bucket (a token bucket too: level and time, refilled at the rate, changed with a
compare-and-set on its revision). Every replica watches the bucket, so a client that one replica
shares is shared by all: each refuses it once the shared level, less what it admitted itself
since, is below one. A client is admitted only when both its local bucket and, where there is
one, its shared level allow it. The design and its bounds: DESIGN.md, "The rate limit across
replicas".

When the bucket is unreachable (NATS down, JetStream failing), the shared levels are forgotten
and each replica limits on its own bucket alone, as a single replica does; the next successful
write or watch brings the shared levels back.

Keys in the bucket are hashes of the client's address (an IPv4 address or IPv6 /64), not the
address: the bus carries no client addresses. Entries are not sealed: only gateways may write
the bucket (the generated permissions), and a gateway's credentials and its seal keys are in
the same pod.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry, Counter, Gauge

log = structlog.get_logger("trustpub.gateway.limits")

# Clients folded into the bucket per interval at most, and at once: bounds what one interval
# costs NATS whatever a flood does (the others wait for the next interval).
MAX_FLUSH = 2000
FLUSH_CONCURRENCY = 64
# A compare-and-set that lost to another replica is tried again this often before the client
# waits for the next interval.
CAS_ATTEMPTS = 3
# Seconds between attempts to reach an unreachable bucket.
RETRY_S = 2.0
# How long one bucket operation may take before the bucket counts as unreachable.
OP_TIMEOUT_S = 2.0
_DELETED = ("DEL", "PURGE")


class SharedLevel(msgspec.Struct, frozen=True):
    """A client's entry in the bucket: its token level at ``at`` (unix seconds)."""

    level: float
    at: float


_decoder = msgspec.json.Decoder(SharedLevel)


@dataclass(slots=True)
class _Snapshot:
    level: float
    at: float
    revision: int


def kv_key(client: str, rate: float, burst: float) -> str:
    """The bucket key of a client (its bucket key in :mod:`trustpub.gateway.limits`) under a
    limit: replicas share a client's level only with replicas of the same limit."""
    named = f"{client} {rate!r} {burst!r}".encode()
    return "c" + hashlib.blake2b(named, digest_size=16).hexdigest()


def bucket_config(name: str, rate: float, burst: float) -> KeyValueConfig:
    """The bucket: memory only (counts are worth nothing after a NATS restart), one value per
    key, entries forgotten once a client idle that long would be full again anyway."""
    ttl = max(60.0, 2 * burst / rate)
    return KeyValueConfig(bucket=name, history=1, ttl=ttl, storage=StorageType.MEMORY)


class SharedCounts:
    """The shared levels of the clients this replica shares, and what it admitted since.

    ``local_level(client)`` is the client's level in this replica's own bucket (full when it
    has none): what a replica admitted before it shared the client is folded in when it starts
    to. Keyed by :func:`kv_key`.
    """

    def __init__(  # noqa: PLR0913  (the limit's settings, and where it reports)
        self,
        rate: float,
        burst: float,
        *,
        interval: float,
        max_clients: int,
        local_level: Callable[[str], float],
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.interval = interval
        self.max_clients = max_clients
        self.local_level = local_level
        self.clock = clock
        self.up = False
        self._snapshots: collections.OrderedDict[str, _Snapshot] = collections.OrderedDict()
        self._pending: dict[str, float] = {}
        self._kv: KeyValue | None = None
        self._watcher: Any = None
        self._next_attempt = 0.0
        self.clients = Gauge(
            "trustpub_http_rate_limit_shared_clients",
            "Clients whose rate limit this gateway replica shares with the others (their level is "
            "in the JetStream bucket).",
            registry=registry,
        )
        self.clients.set_function(lambda: len(self._snapshots))
        self.up_gauge = Gauge(
            "trustpub_http_rate_limit_shared_up",
            "1 while the shared rate-limit bucket is reachable; 0 while each replica limits on its own.",
            registry=registry,
        )
        self.failures = Counter(
            "trustpub_http_rate_limit_shared_failures_total",
            "Operations on the shared rate-limit bucket that failed (the replica fell back to its "
            "own limit).",
            registry=registry,
        )

    # --- the hot path: no I/O --------------------------------------------------------------

    def level(self, client: str) -> float | None:
        """The client's shared level now, less what this replica admitted since it was
        stored; None when the client is not shared (or the bucket is down)."""
        key = kv_key(client, self.rate, self.burst)
        snap = self._snapshots.get(key)
        if snap is None:
            return None
        if key not in self._pending:
            # Shared by another replica: what this one admitted before goes into the bucket.
            self._share(key, self.burst - self.local_level(client))
        refilled = min(self.burst, snap.level + max(0.0, self.clock() - snap.at) * self.rate)
        return refilled - self._pending.get(key, 0.0)

    def admitted(self, client: str, local: float) -> None:
        """This replica admitted one request of ``client``, whose local level is now ``local``."""
        key = kv_key(client, self.rate, self.burst)
        if key in self._pending:
            self._pending[key] += 1.0
        elif self.up and local < self.burst / 2 + 1:
            # Shared from now on: what it spent here so far goes into the bucket.
            self._share(key, self.burst - local)

    def _share(self, key: str, spent: float) -> None:
        if len(self._pending) >= self.max_clients and key not in self._pending:
            return  # bounded: a flood of distinct clients stays local
        self._pending[key] = max(0.0, spent)

    # --- the bucket -----------------------------------------------------------------------

    def apply(self, key: str, data: bytes, revision: int) -> None:
        """A bucket entry (from the watch, or the one this replica just wrote)."""
        try:
            shared = _decoder.decode(data)
        except msgspec.DecodeError:
            log.warning("rate_limit_entry_refused", reason="malformed")
            return
        current = self._snapshots.get(key)
        if current is not None and current.revision >= revision:
            return
        self._snapshots[key] = _Snapshot(
            min(shared.level, self.burst), min(shared.at, self.clock()), revision
        )
        self._snapshots.move_to_end(key)
        while len(self._snapshots) > self.max_clients:
            old, _ = self._snapshots.popitem(last=False)
            self._pending.pop(old, None)

    def _down(self, reason: str) -> None:
        if self.up:
            log.warning("rate_limit_shared_down", reason=reason, fallback="each replica limits on its own")
        self.up = False
        self.up_gauge.set(0)
        self._snapshots.clear()
        self._pending.clear()
        self._kv = None
        self._next_attempt = time.monotonic() + RETRY_S

    def _up(self) -> None:
        if not self.up:
            log.info("rate_limit_shared_up")
        self.up = True
        self.up_gauge.set(1)

    async def run(self, nc: NatsClient, bucket: str) -> None:
        """Open the bucket, watch it and fold the pending counts into it, every interval,
        until cancelled."""
        watch: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    if not nc.is_connected:
                        self._down("nats-disconnected")
                    elif self._kv is None and time.monotonic() >= self._next_attempt:
                        await self._open(nc, bucket)
                        watch = asyncio.create_task(self._watch())
                    elif watch is not None and watch.done():
                        self._down("watch-ended")
                    elif self._kv is not None:
                        await self._flush()
                        self._up()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001  (any failure: fall back, try again later)
                    self.failures.inc()
                    self._down(type(exc).__name__)
                if self._kv is None and watch is not None:
                    watch.cancel()
                    watch = None
                    await self._stop_watcher()
                await asyncio.sleep(self.interval)
        finally:
            if watch is not None:
                watch.cancel()
            await self._stop_watcher()

    async def _open(self, nc: NatsClient, bucket: str) -> None:
        js = nc.jetstream(timeout=OP_TIMEOUT_S)
        try:
            kv = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                kv = await js.create_key_value(bucket_config(bucket, self.rate, self.burst))
            except nats.js.errors.BadRequestError:
                kv = await js.key_value(bucket)  # another replica created it meanwhile
        self._watcher = await asyncio.wait_for(kv.watchall(), OP_TIMEOUT_S)
        self._kv = kv

    async def _watch(self) -> None:
        watcher = self._watcher
        async for entry in watcher:
            if entry is None or entry.operation in _DELETED or entry.value is None:
                continue
            self.apply(entry.key, entry.value, entry.revision or 0)

    async def _stop_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def _flush(self) -> None:
        keys = [k for k, v in self._pending.items() if v > 0][:MAX_FLUSH]
        for start in range(0, len(keys), FLUSH_CONCURRENCY):
            await asyncio.gather(*(self._fold(k) for k in keys[start : start + FLUSH_CONCURRENCY]))

    async def _fold(self, key: str) -> None:
        kv = self._kv
        if kv is None:
            return
        spent = self._pending.get(key, 0.0)
        for _ in range(CAS_ATTEMPTS):
            now = self.clock()
            try:
                entry = await asyncio.wait_for(kv.get(key), OP_TIMEOUT_S)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                entry = None
            base, revision = self.burst, 0
            if entry is not None and entry.value:
                stored = _decoder.decode(entry.value)
                base = min(self.burst, stored.level + max(0.0, now - stored.at) * self.rate)
                revision = entry.revision or 0
            # Debt is kept (down to one burst), so a flood spread over replicas pays for what
            # they admitted before they saw each other's counts.
            level = max(-self.burst, base - spent)
            data = msgspec.json.encode(SharedLevel(level=level, at=now))
            try:
                if revision:
                    written = await asyncio.wait_for(kv.update(key, data, last=revision), OP_TIMEOUT_S)
                else:
                    written = await asyncio.wait_for(kv.create(key, data), OP_TIMEOUT_S)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another replica wrote first: fold into its value
            if key in self._pending:
                self._pending[key] = max(0.0, self._pending[key] - spent)
            self.apply(key, data, written)
            return
