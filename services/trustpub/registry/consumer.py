"""The registry's durable pull consumers of the events stream: one loop, one place.

A consumer subscribes (creating the stream if needed), fetches batches, hands each to
:meth:`EventConsumer.store` (which acknowledges after its commit, or negatively acknowledges
on an outage) and retries with backoff through outages of NATS or PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from trustpub.messages.endpoints import Event
from trustpub.runtime import Runtime
from trustpub.runtime.events import ensure_stream

log = structlog.get_logger("trustpub.registry")

BATCH = 100
FETCH_WAIT_S = 1.0
# How long JetStream waits for an ack before redelivering; a batch insert takes
# milliseconds, so this only matters when this replica died mid-batch.
ACK_WAIT_S = 30.0
RETRY_DELAY_S = 2.0
RETRY_DELAY_MAX_S = 30.0


class EventConsumer:
    """A durable pull consumer of one event; subclasses say how a batch is stored."""

    def __init__(self, rt: Runtime, event: Event[Any]) -> None:
        self.rt = rt
        self.event = event
        self.subject = event.subject(rt.subjects.root)
        self.durable = rt.subjects.durable(event.durable)
        self._sub: Any = None

    async def store(self, msgs: Sequence[Msg]) -> int:
        """Store a fetched batch and acknowledge it; the rows stored."""
        raise NotImplementedError

    async def observe(self, sub: Any, fetched: int) -> None:  # noqa: ANN401
        """Called after every fetch (a backlog gauge, say); nothing by default."""

    async def run(self) -> None:
        try:
            await self._consume()
        finally:
            # A pull subscription left open holds nc.drain() until its timeout.
            if self._sub is not None:
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()

    async def _consume(self) -> None:
        js = self.rt.nc.jetstream()
        delay = RETRY_DELAY_S
        while not self.rt.stopping:
            try:
                if self._sub is None:
                    await ensure_stream(js, self.rt.subjects)
                    self._sub = await js.pull_subscribe(
                        self.subject,
                        durable=self.durable,
                        stream=self.rt.subjects.events_stream,
                        config=ConsumerConfig(
                            ack_policy=AckPolicy.EXPLICIT,
                            deliver_policy=DeliverPolicy.ALL,
                            ack_wait=ACK_WAIT_S,
                        ),
                    )
                    log.info("event_consumer_started", durable=self.durable)
                try:
                    msgs = await self._sub.fetch(batch=BATCH, timeout=FETCH_WAIT_S)
                except (nats.errors.TimeoutError, TimeoutError):
                    msgs = []
                if msgs:
                    await self.store(msgs)
                await self.observe(self._sub, len(msgs))
                delay = RETRY_DELAY_S
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  (outages of NATS or PostgreSQL: retry)
                if self.rt.stopping:
                    break
                log.warning(
                    "event_consumer_retrying",
                    durable=self.durable,
                    error=type(exc).__name__,
                    detail=str(exc)[:200],
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_DELAY_MAX_S)
