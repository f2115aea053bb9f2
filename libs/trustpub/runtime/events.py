"""Events on JetStream: ``<root>.events.<domain>.<fact>``, kept in one stream.

Publishing (``Runtime.publish_event``) waits for the stream's acknowledgement, so an event
that was acknowledged is stored; the ``Nats-Msg-Id`` header (the event id) lets JetStream drop
a re-sent duplicate within the stream's duplicate window, and consumers insert by event id as
well.

The stream is a buffer that the registry consumes, not the record (the audit table in
PostgreSQL is): it is bounded by age, bytes and messages, and past a bound JetStream discards
the oldest events (docs/metrics.md, "The events stream").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig, StreamInfo

from trustpub.messages import Subjects
from trustpub.runtime.config import CommonSettings, ConfigError

log = structlog.get_logger("trustpub.events")

EVENTS_MAX_AGE_S = 7 * 24 * 3600
DUPLICATE_WINDOW_S = 120


@dataclass(frozen=True, slots=True)
class StreamBounds:
    """How much the events stream keeps; past any bound the oldest events go."""

    max_bytes: int
    max_msgs: int
    max_age_s: float = EVENTS_MAX_AGE_S

    @classmethod
    def of(cls, settings: CommonSettings) -> StreamBounds:
        """The bounds ``TRUSTPUB_EVENTS_MAX_BYTES`` and ``TRUSTPUB_EVENTS_MAX_MSGS`` say.

        Raises:
            ConfigError: a bound is not a positive number.
        """
        for name, value in (
            ("TRUSTPUB_EVENTS_MAX_BYTES", settings.events_max_bytes),
            ("TRUSTPUB_EVENTS_MAX_MSGS", settings.events_max_msgs),
        ):
            if value < 1:
                msg = f"{name} must be at least 1, got {value}"
                raise ConfigError(msg)
        return cls(max_bytes=settings.events_max_bytes, max_msgs=settings.events_max_msgs)

    def config(self, subjects: Subjects) -> StreamConfig:
        """The whole configuration of a new events stream."""
        return StreamConfig(
            name=subjects.events_stream,
            subjects=[subjects.events_wildcard],
            storage=StorageType.FILE,
            max_age=self.max_age_s,
            max_bytes=self.max_bytes,
            max_msgs=self.max_msgs,
            discard=DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW_S,
        )

    def applied_to(self, config: StreamConfig) -> StreamConfig | None:
        """``config`` (an existing stream's) with these bounds, or None when it has them."""
        if (
            config.max_bytes == self.max_bytes
            and config.max_msgs == self.max_msgs
            and math.isclose(config.max_age or 0, self.max_age_s, abs_tol=1e-3)
            and config.discard == DiscardPolicy.OLD
            and math.isclose(config.duplicate_window or 0, DUPLICATE_WINDOW_S, abs_tol=1e-3)
        ):
            return None
        # Everything else (replicas, placement, ...) stays as the operator set it.
        return config.evolve(
            max_bytes=self.max_bytes,
            max_msgs=self.max_msgs,
            max_age=self.max_age_s,
            discard=DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW_S,
        )


DEFAULT_BOUNDS = StreamBounds.of(CommonSettings())


async def ensure_stream(
    js: JetStreamContext,
    subjects: Subjects,
    bounds: StreamBounds = DEFAULT_BOUNDS,
    *,
    update: bool = False,
) -> StreamInfo:
    """Create the events stream with ``bounds`` if it does not exist (every publisher and
    consumer of an event may: the generated permissions allow them this stream's INFO and
    CREATE); with ``update``, also give an existing stream these bounds when it has others (a
    stream created by an older version had only an age bound). Only the stream's consumers may
    update it (``may_update_events_stream``), so that no publisher can shrink what a consumer
    has not read yet. Returns the stream's info.

    Raises:
        nats.errors.Error: NATS refused or did not answer (``insufficient storage resources``
            when it cannot reserve ``max_bytes``).
    """
    name = subjects.events_stream
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        try:
            return await js.add_stream(bounds.config(subjects))
        except nats.js.errors.BadRequestError:
            # Another replica created it between our two calls.
            info = await js.stream_info(name)
    if update:
        wanted = bounds.applied_to(info.config)
        if wanted is not None:
            before = info.config
            info = await js.update_stream(wanted)
            log.info(
                "events_stream_bounds_updated",
                stream=name,
                max_bytes=(before.max_bytes, bounds.max_bytes),
                max_msgs=(before.max_msgs, bounds.max_msgs),
                max_age=(before.max_age, bounds.max_age_s),
                discard=(str(before.discard), "old"),
            )
    return info
