"""The gateway's exchange events: a refused exchange at once, the delivered ones in batches.
The registry makes each an audit row and applies it to the mint record: delivered (single use
from then on) or released (DESIGN.md, "Exactly once, as the publisher sees it").

Publishing waits for JetStream's acknowledgement and is retried. Only a 503, which may follow
a committed grant, waits for its event to be stored before it is answered (:meth:`settle`);
nothing else holds up the answer to the client. ``exchange.succeeded`` carries the deliveries
of up to :data:`BATCH_WAIT_S` in one message: one JetStream publish per exchange cost about a
sixth of the exchange's CPU, in the gateway and in NATS (DESIGN.md, "Performance").
"""

from __future__ import annotations

import asyncio
import uuid

import structlog
from prometheus_client import Counter

from trustpub.messages import TrustpubError
from trustpub.messages.endpoints import EXCHANGE_FAILED, EXCHANGE_SUCCEEDED, Event
from trustpub.messages.v1 import ExchangeEvent, ExchangeEvents
from trustpub.runtime import Runtime

log = structlog.get_logger("trustpub.gateway")

# How long a delivery report waits for others to share its message. Short: a report lost with
# its gateway (killed between answering and reporting) leaves a delivered mint record that a
# later presentation of the same OIDC token could be granted again after its lease (DESIGN.md,
# "Exactly once, as the publisher sees it").
BATCH_WAIT_S = 0.0
BATCH_MAX = 500
_ATTEMPTS = 5


class EventPublisher:
    """Publishes the gateway's exchange events in the background."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._succeeded: list[ExchangeEvent] = []
        self._timer: asyncio.TimerHandle | None = None
        self.lost = Counter(
            "trustpub_events_unpublished_total",
            "Exchange events that JetStream did not acknowledge after every retry.",
            registry=rt.registry,
        )

    def record(self, event: ExchangeEvent) -> None:
        """Publish ``event`` soon: a refusal now, a success with the next batch."""
        if event.outcome != "succeeded":
            self._rt.spawn(self._publish(EXCHANGE_FAILED, event, event.event_id, 1))
            return
        self._succeeded.append(event)
        if len(self._succeeded) >= BATCH_MAX:
            self._send_batch()
        elif self._timer is None:
            # At the end of this turn of the event loop: the deliveries answered in it go in one
            # message, and a gateway killed now loses at most the reports of this turn.
            self._timer = asyncio.get_running_loop().call_later(BATCH_WAIT_S, self._send_batch)

    async def settle(self, event: ExchangeEvent, timeout: float) -> None:
        """Publish a refusal now and wait (up to ``timeout``) until it is stored: an answer
        that may follow a committed grant goes out only after its release, so that the
        client's retry finds the mint record released (DESIGN.md, "Exactly once, as the
        publisher sees it"). Past ``timeout`` it is retried in the background."""
        try:
            await self._rt.publish_event(EXCHANGE_FAILED, event, event.event_id, timeout=timeout)
        except TrustpubError:
            self._rt.spawn(self._publish(EXCHANGE_FAILED, event, event.event_id, 1))

    async def flush(self) -> None:
        """Send the batch now (on drain)."""
        self._send_batch()

    def _send_batch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._succeeded:
            return
        batch, self._succeeded = self._succeeded, []
        self._rt.spawn(
            self._publish(EXCHANGE_SUCCEEDED, ExchangeEvents(events=batch), uuid.uuid4().hex, len(batch))
        )

    async def _publish(
        self,
        event: Event[ExchangeEvent] | Event[ExchangeEvents],
        message: ExchangeEvent | ExchangeEvents,
        msg_id: str,
        count: int,
    ) -> None:
        for attempt in range(_ATTEMPTS):
            try:
                await self._rt.publish_event(event, message, msg_id)
            except TrustpubError:
                await asyncio.sleep(0.2 * 2**attempt)
            else:
                return
        self.lost.inc(count)
        log.error("exchange_events_unpublished", event=repr(event), events=count, msg_id=msg_id)
