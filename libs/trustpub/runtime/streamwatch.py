"""The events stream watched: its bounds kept, its usage exported to Prometheus.

One line in a service's setup starts it::

    watch_event_stream(rt)

The registry runs it (``python -m trustpub.registry`` wraps its setup in
:func:`with_event_stream_watch`): it consumes the stream, and only a consumer may change the stream's
configuration (``may_update_events_stream``). Every ``WATCH_INTERVAL_S`` it reads the stream's
info, creates the stream if it is missing, gives it the bounds of ``TRUSTPUB_EVENTS_MAX_BYTES``
and ``TRUSTPUB_EVENTS_MAX_MSGS`` when it has others (a stream created by an older version was
bounded by age only), and sets the gauges of docs/metrics.md, "The events stream": bytes and
messages held, and the bounds in force. A service that may not update the stream only exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref

import nats.js.errors
import structlog
from nats.js.api import StreamInfo
from prometheus_client import CollectorRegistry, Gauge

from trustpub.messages.authorization import may_update_events_stream
from trustpub.runtime.events import StreamBounds, ensure_stream
from trustpub.runtime.service import Runtime, Setup

log = structlog.get_logger("trustpub.events")

WATCH_INTERVAL_S = 15.0
# One look at the stream (info, and an update when due) must not hold the loop longer.
CHECK_TIMEOUT_S = 10.0


class StreamMetrics:
    """The events stream's usage and bounds, as of the last look."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.bytes = Gauge(
            "trustpub_events_stream_bytes", "Bytes the JetStream events stream holds.", registry=registry
        )
        self.messages = Gauge(
            "trustpub_events_stream_messages",
            "Messages the JetStream events stream holds.",
            registry=registry,
        )
        self.max_bytes = Gauge(
            "trustpub_events_stream_max_bytes",
            "The events stream's bound in bytes (-1: none); past it the oldest events are discarded.",
            registry=registry,
        )
        self.max_messages = Gauge(
            "trustpub_events_stream_max_messages",
            "The events stream's bound in messages (-1: none); past it the oldest events are discarded.",
            registry=registry,
        )
        self.max_age = Gauge(
            "trustpub_events_stream_max_age_seconds",
            "The events stream's bound in age (0: none); older events are discarded.",
            registry=registry,
        )

    def observe(self, info: StreamInfo) -> None:
        self.bytes.set(info.state.bytes)
        self.messages.set(info.state.messages)
        self.max_bytes.set(info.config.max_bytes if info.config.max_bytes is not None else -1)
        self.max_messages.set(info.config.max_msgs if info.config.max_msgs is not None else -1)
        self.max_age.set(info.config.max_age or 0)


class EventStreamWatch:
    """Keeps the events stream bounded (where this service may) and exports its usage."""

    def __init__(self, rt: Runtime, bounds: StreamBounds, *, interval: float = WATCH_INTERVAL_S) -> None:
        self.rt = rt
        self.bounds = bounds
        self.interval = interval
        self.update = may_update_events_stream(rt.name)
        self.refused = False  # NATS refused the last update of the bounds
        self.metrics = StreamMetrics(rt.registry)

    async def check(self) -> StreamInfo:
        """One look: create or update the stream as due, then set the gauges.

        Raises:
            nats.errors.Error: NATS refused or did not answer.
            TimeoutError: no answer within ``CHECK_TIMEOUT_S``.
        """
        js = self.rt.nc.jetstream()
        try:
            info = await asyncio.wait_for(
                ensure_stream(js, self.rt.subjects, self.bounds, update=self.update), CHECK_TIMEOUT_S
            )
        except nats.js.errors.APIError as exc:
            # NATS refused these bounds (it cannot reserve max_bytes, docs/metrics.md): the stream
            # keeps its own, which the gauges show.
            if not self.refused:
                log.warning(
                    "events_stream_bounds_refused", error=exc.description, max_bytes=self.bounds.max_bytes
                )
            self.refused = True
            info = await asyncio.wait_for(js.stream_info(self.rt.subjects.events_stream), CHECK_TIMEOUT_S)
        else:
            self.refused = False
        self.metrics.observe(info)
        return info

    async def run(self) -> None:
        failing = False
        while not self.rt.stopping:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  (NATS down or refusing: look again later)
                if not failing:
                    log.warning("events_stream_watch_failed", error=type(exc).__name__, detail=str(exc)[:200])
                failing = True
            else:
                failing = False
            await asyncio.sleep(self.interval)


_watches: weakref.WeakKeyDictionary[Runtime, EventStreamWatch] = weakref.WeakKeyDictionary()


def watch_event_stream(rt: Runtime, *, interval: float = WATCH_INTERVAL_S) -> EventStreamWatch:
    """Start watching the events stream in the background of ``rt`` (stopped on drain); a
    runtime that watches already keeps its one watch.

    Raises:
        ConfigError: ``TRUSTPUB_EVENTS_MAX_BYTES`` or ``TRUSTPUB_EVENTS_MAX_MSGS`` is not positive.
    """
    watch = _watches.get(rt)
    if watch is None:
        watch = _watches[rt] = EventStreamWatch(rt, StreamBounds.of(rt.settings), interval=interval)
        rt.background(watch.run(), "events stream watch")
    return watch


def with_event_stream_watch(setup: Setup) -> Setup:
    """``setup``, then :func:`watch_event_stream`: how ``python -m trustpub.registry`` runs."""

    async def watched(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
        await setup(rt, stack)
        watch_event_stream(rt)

    return watched
