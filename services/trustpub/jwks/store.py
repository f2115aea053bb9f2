"""The key sets in the JetStream key-value bucket the verifiers watch.

One entry per issuer, under :func:`trustpub.messages.keys.kv_key`, holding a
:class:`~trustpub.messages.v1.KeySet`. Writes are whole values of a validated set, so two
jwks replicas writing the same issuer only ever leave one good set behind; bookkeeping writes
(a claim to fetch, a failed fetch) are compare-and-set on the entry's revision.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from trustpub.messages import Unavailable
from trustpub.messages.keys import kv_key
from trustpub.messages.v1 import KeySet, encode

log = structlog.get_logger("trustpub.jwks")

_decoder = msgspec.json.Decoder(KeySet)


@dataclass(frozen=True)
class Stored:
    """A key set as read from the bucket, with the revision a conditional update names."""

    keyset: KeySet
    revision: int


class KvKeySetStore:
    """Reads and writes key sets; every NATS failure becomes :class:`Unavailable`."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, issuer: str) -> Stored | None:
        """The stored set of ``issuer``, or None when there is none (or it is unreadable).

        Raises:
            Unavailable: the bucket did not answer.
        """
        try:
            entry = await self._kv.get(kv_key(issuer))
        except nats.js.errors.KeyNotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable("the key store did not answer") from exc
        if entry.value is None or entry.revision is None:
            return None
        try:
            keyset = _decoder.decode(entry.value)
        except msgspec.DecodeError:
            # Not ours (or a future incompatible writer): treat as absent, the next good
            # fetch overwrites it.
            log.warning("jwks_store_unreadable", issuer=issuer)
            return None
        if keyset.issuer != issuer:
            log.warning("jwks_store_mismatch", issuer=issuer)
            return None
        return Stored(keyset, entry.revision)

    async def put(self, keyset: KeySet) -> int:
        """Store a validated set whatever is there now; returns the new revision.

        Raises:
            Unavailable: the bucket did not acknowledge the write.
        """
        try:
            return await self._kv.put(kv_key(keyset.issuer), encode(keyset))
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable("the key store did not acknowledge the write") from exc

    async def update(self, keyset: KeySet, revision: int) -> int | None:
        """Store ``keyset`` only if the entry is still at ``revision``: the new revision, or
        None when another writer moved it on (a compare-and-set: two replicas cannot both win).

        Raises:
            Unavailable: the bucket did not acknowledge the write.
        """
        try:
            return await self._kv.update(kv_key(keyset.issuer), encode(keyset), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable("the key store did not acknowledge the write") from exc

    async def ping(self) -> bool:
        """Readiness: the bucket answers."""
        await self._kv.status()
        return True
