"""The JetStream key-value bucket of the issuers' key sets, shared by jwks and verifiers."""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue


async def open_bucket(js: JetStreamContext, bucket: str) -> KeyValue:
    """The bucket, created if missing: whichever service starts first creates it, and
    another replica may be creating it at the same moment."""
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        # history=1: only the current set matters; file storage: it survives a restart of
        # NATS, so verifiers have keys while an issuer is down (security.md F10).
        return await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE))
    except nats.js.errors.BadRequestError:
        # Created by another service between our two calls, with a config of its own.
        return await js.key_value(bucket)
