"""The key sets in the JetStream key-value bucket the verifiers watch.

One entry per issuer, under :func:`trustpub.messages.keys.kv_key`, holding a
:class:`~trustpub.messages.v1.KeySet` sealed for the verifiers (runtime/keysets.py); an entry
whose seal does not hold, or that is stamped in the future, is treated as absent (and the next
good fetch overwrites it). Writes are whole values of a validated set, so two
jwks replicas writing the same issuer only ever leave one good set behind; bookkeeping writes
(a claim to fetch, a failed fetch) are compare-and-set on the entry's revision.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from trustpub.messages import Unavailable
from trustpub.messages.keys import kv_key
from trustpub.messages.v1 import KeySet, encode
from trustpub.runtime.keysets import KeySetRefused, seal, unseal
from trustpub.runtime.seal import Seals

log = structlog.get_logger("trustpub.jwks")

Refused = Callable[[str], None]


@dataclass(frozen=True)
class Stored:
    """A key set as read from the bucket, with the revision a conditional update names."""

    keyset: KeySet
    revision: int


class KvKeySetStore:
    """Reads and writes key sets; every NATS failure becomes :class:`Unavailable`."""

    def __init__(
        self,
        kv: KeyValue,
        seals: Seals,
        *,
        now: Callable[[], float] = time.time,
        refused: Refused | None = None,
    ) -> None:
        self._kv = kv
        self._seals = seals
        self._now = now
        self._refused = refused or (lambda _: None)

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
            keyset = unseal(self._seals, kv_key(issuer), entry.value, now=self._now)
        except KeySetRefused as exc:
            # Not ours (forged, stale-dated, or an incompatible writer): treat as absent, the
            # next good fetch overwrites it.
            log.warning("jwks_store_refused", issuer=issuer, reason=exc.reason, detail=str(exc))
            self._refused(exc.reason)
            return None
        return Stored(keyset, entry.revision)

    async def put(self, keyset: KeySet) -> int:
        """Store a validated set whatever is there now; returns the new revision.

        Raises:
            Unavailable: the bucket did not acknowledge the write.
        """
        try:
            return await self._kv.put(kv_key(keyset.issuer), encode(seal(self._seals, keyset)))
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable("the key store did not acknowledge the write") from exc

    async def update(self, keyset: KeySet, revision: int) -> int | None:
        """Store ``keyset`` only if the entry is still at ``revision``: the new revision, or
        None when another writer moved it on (a compare-and-set: two replicas cannot both win).

        Raises:
            Unavailable: the bucket did not acknowledge the write.
        """
        try:
            return await self._kv.update(
                kv_key(keyset.issuer), encode(seal(self._seals, keyset)), last=revision
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable("the key store did not acknowledge the write") from exc

    async def ping(self) -> bool:
        """Readiness: the bucket answers."""
        await self._kv.status()
        return True
