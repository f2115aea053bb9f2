"""Events on JetStream: ``<root>.events.<domain>.<fact>``, kept in one stream.

Publishing waits for the stream's acknowledgement, so an event that was acknowledged is
stored; the ``Nats-Msg-Id`` header (the event id) lets JetStream drop a re-sent duplicate
within the stream's duplicate window, and consumers insert by event id as well.
"""

from __future__ import annotations

import msgspec
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from trustpub.messages import Subjects, Unavailable
from trustpub.messages.v1 import encode

log = structlog.get_logger("trustpub.events")

EVENTS_MAX_AGE_S = 7 * 24 * 3600  # the audit table is the record; the stream is a buffer
DUPLICATE_WINDOW_S = 120


async def ensure_stream(js: JetStreamContext, subjects: Subjects) -> None:
    """Create the events stream if it does not exist (every publisher and consumer may)."""
    config = StreamConfig(
        name=subjects.events_stream,
        subjects=[subjects.events_wildcard],
        storage=StorageType.FILE,
        max_age=EVENTS_MAX_AGE_S,
        duplicate_window=DUPLICATE_WINDOW_S,
    )
    try:
        await js.stream_info(subjects.events_stream)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # Another replica created it between our two calls.
            await js.stream_info(subjects.events_stream)


async def publish(
    js: JetStreamContext, subject: str, event: msgspec.Struct, event_id: str, *, timeout: float = 2.0
) -> None:
    """Publish one event and wait until JetStream has stored it.

    Raises:
        Unavailable: JetStream did not acknowledge within ``timeout``.
    """
    try:
        await js.publish(subject, encode(event), timeout=timeout, headers={"Nats-Msg-Id": event_id})
    except (nats.errors.Error, TimeoutError) as exc:
        raise Unavailable(f"event stream did not acknowledge {subject}") from exc
