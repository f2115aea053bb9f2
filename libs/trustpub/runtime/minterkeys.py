"""The minter's public keys as a service trusts them (the gateway, the upload gate): only the
configured key ids.

A service asks the minter for its key set (``token.keys``), keeps the keys whose id is in
``TRUSTPUB_MINTER_KEY_IDS`` and is their own RFC 7638 thumbprint, and uses exactly those to
serve ``/_/oidc/jwks`` and to verify upload tokens itself (introspection). A rogue answer on
the bus can therefore neither add a key nor swap one: a key id pins its key material. Nor can
it withdraw one: a pinned key, once seen, is kept for good (which keys are trusted is the
configuration's say, not the bus's), and the minter is asked again only while a pinned id has
not been seen yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from trustpub.messages import Unavailable, uploadtoken
from trustpub.messages.v1 import KeysReply

log = structlog.get_logger("trustpub.minterkeys")

Fetch = Callable[[], Awaitable[KeysReply]]

# While a pinned key has not been seen, the minter is asked again at most this often: often
# enough that a lost or rogue answer costs a request or two, not the cache's whole lifetime.
MISSING_RETRY_S = 1.0


class MinterKeys:
    """The pinned keys seen so far; the minter is asked only while one is missing."""

    def __init__(self, pinned: tuple[str, ...], fetch: Fetch, *, retry: float = MISSING_RETRY_S) -> None:
        self.pinned = frozenset(pinned)
        self._fetch = fetch
        self._retry = retry
        self._keys: dict[str, uploadtoken.PublicKey] = {}
        self._at = float("-inf")
        self._flight: asyncio.Task[None] | None = None

    async def keys(self) -> dict[str, uploadtoken.PublicKey]:
        """The pinned keys the minter published (asked again while one is missing).

        Raises:
            Unavailable: none of the pinned keys is known and the minter did not answer.
        """
        if self.pinned - self._keys.keys() and time.monotonic() - self._at > self._retry:
            if self._flight is None:
                self._flight = asyncio.ensure_future(self._refresh())
            flight = self._flight
            try:
                await asyncio.shield(flight)
            except Unavailable:
                if not self._keys:
                    raise
                log.warning("minter_keys_stale", reason="the minter did not answer; keeping the keys held")
            finally:
                if self._flight is flight and flight.done():
                    self._flight = None
        if not self._keys:
            raise Unavailable("none of the configured minter key ids is published by the minter")
        return self._keys

    async def _refresh(self) -> None:
        reply = await self._fetch()
        kept: dict[str, uploadtoken.PublicKey] = {}
        for obj in reply.jwks.get("keys", []) if isinstance(reply.jwks.get("keys"), list) else []:
            if not isinstance(obj, dict) or obj.get("kid") not in self.pinned:
                continue
            try:
                key = uploadtoken.public_key(obj)
            except ValueError as exc:
                # A pinned id over other key material: an answer that is not the minter's.
                log.warning("minter_key_refused", kid=str(obj.get("kid"))[:80], reason=str(exc))
                continue
            kept[key.kid] = key
        self._keys = {**self._keys, **kept}
        self._at = time.monotonic()
        missing = sorted(self.pinned - self._keys.keys())
        if missing:
            log.warning("minter_keys_missing", kids=missing)

    async def jwks(self) -> dict[str, Any]:
        """The JWK Set served at ``/_/oidc/jwks``.

        Raises:
            Unavailable: see :meth:`keys`.
        """
        return {"keys": [k.jwk for k in (await self.keys()).values()]}

    async def verify(self, token: str, *, prefix: str, issuer: str, audience: str) -> dict[str, Any]:
        """The claims of an upload token signed with a pinned key.

        Raises:
            InvalidToken: not signed with a pinned key, not ours, or expired.
            Unavailable: see :meth:`keys`.
        """
        keys = await self.keys()
        return uploadtoken.verify(token, prefix=prefix, keys=keys, issuer=issuer, audience=audience)
