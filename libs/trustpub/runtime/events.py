"""Events on JetStream: ``<root>.events.<domain>.<fact>``, kept in one stream.

Publishing (``Runtime.publish_event``) waits for the stream's acknowledgement, so an event
that was acknowledged is stored; the ``Nats-Msg-Id`` header (the event id) lets JetStream drop
a re-sent duplicate within the stream's duplicate window, and consumers insert by event id as
well.
"""

from __future__ import annotations

import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from trustpub.messages import Subjects

log = structlog.get_logger("trustpub.events")

EVENTS_MAX_AGE_S = 7 * 24 * 3600  # the audit table is the record; the stream is a buffer
DUPLICATE_WINDOW_S = 120


async def ensure_stream(js: JetStreamContext, subjects: Subjects) -> None:
    """Create the events stream if it does not exist (every publisher and consumer of an event
    may: the generated permissions allow them this stream's INFO and CREATE)."""
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
