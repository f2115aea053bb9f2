"""The JetStream key-value bucket of the issuers' key sets, shared by jwks and verifiers.

Only the jwks service writes it (the generated permissions), and every entry carries its
seal (:class:`~trustpub.messages.v1.SealedKeySet`): readers check the seal, the key it is
stored under and its times before they trust a key in it, whatever the bus let through.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from trustpub.messages.endpoints import KEYSETS
from trustpub.messages.keys import kv_key
from trustpub.messages.v1 import KeySet, SealedKeySet, encode
from trustpub.runtime.seal import SealError, Seals

# How far the clocks of two replicas may disagree. A key set stamped later than this ahead of
# the reader's clock is refused: trusted, it would outrank every real refresh after it ("older
# than the set held"); the jwks service's cooldown bookkeeping allows the same slack.
CLOCK_SLACK_S = 5.0

_sealed_decoder = msgspec.json.Decoder(SealedKeySet)
_keyset_decoder = msgspec.json.Decoder(KeySet)


class KeySetRefused(Exception):
    """A bucket entry or refresh answer that is not a sealed, well-formed, current key set.

    ``reason`` is a bounded metric label.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def seal(seals: Seals, keyset: KeySet) -> SealedKeySet:
    """``keyset`` sealed by the jwks service for its reader: the bucket value (encoded), and
    the answer to a refresh."""
    body = encode(keyset)
    (reader,) = KEYSETS.readers
    kid, mac = seals.seal_entry(reader, kv_key(keyset.issuer), body)
    return SealedKeySet(kid=kid, mac=mac, body=msgspec.Raw(body))


def unseal(seals: Seals, key: str, data: bytes, *, now: Callable[[], float] = time.time) -> KeySet:
    """The key set stored under bucket ``key``, if its seal holds and its times are not ahead.

    Raises:
        KeySetRefused: not a sealed key set, a wrong seal, stored under another issuer's key,
            or stamped in the future.
    """
    try:
        sealed = _sealed_decoder.decode(data)
    except msgspec.DecodeError:
        raise KeySetRefused("unsealed", "not a sealed key set") from None
    return open_sealed(seals, key, sealed, now=now)


def open_sealed(
    seals: Seals, key: str, sealed: SealedKeySet, *, now: Callable[[], float] = time.time
) -> KeySet:
    """:func:`unseal` for an already decoded envelope (a refresh answer).

    Raises:
        KeySetRefused: see :func:`unseal`.
    """
    body = bytes(sealed.body)
    try:
        # Verifiers check what the jwks service sealed for them; the jwks service reads its
        # own entries back with the same ring.
        (reader,) = KEYSETS.readers
        seals.check_entry(KEYSETS.writer, sealed.kid, sealed.mac, key, body, receiver=reader)
    except SealError as exc:
        raise KeySetRefused(exc.reason, str(exc)) from None
    try:
        keyset = _keyset_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise KeySetRefused("malformed", f"not a KeySet: {exc}") from None
    if kv_key(keyset.issuer) != key:
        raise KeySetRefused("wrong-key", "stored under another issuer's key")
    ahead = max(keyset.fetched_at, keyset.checked_at, keyset.pending_since) - now()
    if ahead > CLOCK_SLACK_S:
        raise KeySetRefused("future", f"stamped {ahead:.0f} s in the future")
    return keyset


async def open_bucket(js: JetStreamContext, bucket: str, *, create: bool = True) -> KeyValue:
    """The bucket; created if missing when ``create`` (only its writer may: the jwks service,
    and another replica may be creating it at the same moment).

    Raises:
        nats.js.errors.BucketNotFoundError: missing, and ``create`` is false.
    """
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        if not create:
            raise
    try:
        # history=1: only the current set matters; file storage: it survives a restart of
        # NATS, so verifiers have keys while an issuer is down (DESIGN.md, "Keys of identity providers").
        return await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE))
    except nats.js.errors.BadRequestError:
        # Created by another service between our two calls, with a config of its own.
        return await js.key_value(bucket)
