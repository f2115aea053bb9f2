"""The verifier's in-memory copy of the issuers' keys: issuer -> kid -> imported JWK.

Keys are imported once, when a key set arrives (from the key-value bucket or a refresh
reply), never per request: importing costs 2.6 times a verification. A key set replaces the
issuer's previous one wholesale, so a key the issuer withdrew stops verifying.

The cache does no I/O itself. When a token names a kid it does not hold, it asks the
``refresh`` callable (the jwks service over NATS, in the service), once per issuer at a time:
concurrent requests for the same issuer share one refresh.

Bounded staleness (DESIGN.md, "Keys of identity providers"): a set whose ``fetched_at`` is more than
``max_age`` seconds old verifies nothing. The cache asks for a refresh first, and if the set
is still that old, the token gets ``unavailable`` (HTTP 503): the issuer has not been reached
for that long, and keys it may have withdrawn meanwhile must not be trusted forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwcrypto import jwk

from trustpub.messages import InvalidToken, TrustpubError, Unavailable
from trustpub.messages.keys import KID_RE, kv_key
from trustpub.messages.text import shown, unb64
from trustpub.messages.v1 import KeySet
from trustpub.providers.issuers import Issuer, IssuerRegistry
from trustpub.verifier.metrics import VerifierMetrics

log = structlog.get_logger("trustpub.verifier.keys")

Refresher = Callable[[str, str], Awaitable[KeySet]]

# Defence in depth: the jwks service validates keys before it stores them, but the bucket is
# shared infrastructure, so a key is checked again before it may verify anything.
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 4096  # larger keys only cost CPU; no identity provider publishes them
RSA_EXPONENT = 65537  # small exponents are the precondition of signature forgeries
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_CURVE_ALG = {"P-256": "ES256", "P-384": "ES384"}

# The default staleness bound: a day of failed refreshes (96 at the default 15 minutes)
# before an issuer's tokens are refused rather than checked against old keys.
DEFAULT_MAX_AGE_S = 86400.0


bucket_key = kv_key  # the shared contract with the jwks service


def issuer_of(key: str) -> str | None:
    """The issuer a bucket key names, or None when it is not one of ours."""
    try:
        # Canonical base64url of UTF-8: exactly the one key bucket_key gives the issuer.
        return unb64(key).decode("utf-8")
    except ValueError:
        return None


class KeyRejected(Exception):
    """One published key cannot be used; the message says why (for the log)."""


def import_key(doc: object, issuer: Issuer) -> tuple[str, jwk.JWK]:
    """Import one published key for ``issuer``; its kid and the ready-to-use JWK.

    Raises:
        KeyRejected: the key cannot verify tokens of this issuer (reason in the message).
    """
    if not isinstance(doc, dict):
        raise KeyRejected("not a JSON object")
    kid = _check_members(doc, issuer)
    try:
        key = jwk.JWK(**doc)
        # Builds (and caches inside the JWK) the cryptography key now: an off-curve point or
        # a bad exponent fails here rather than at the first token.
        public = key.get_op_key("verify")
    except Exception as exc:  # jwcrypto raises many types for bad key material
        raise KeyRejected(f"key {kid} does not import ({type(exc).__name__})") from exc
    if isinstance(public, rsa.RSAPublicKey):
        bits, exponent = public.key_size, public.public_numbers().e
        if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS or exponent != RSA_EXPONENT:
            raise KeyRejected(f"key {kid} is RSA-{bits} with e={exponent}, expected 2048-4096 bits, e=65537")
    elif not isinstance(public, ec.EllipticCurvePublicKey):
        raise KeyRejected(f"key {kid} is not an RSA or EC public key")
    return kid, key


def _check_members(doc: dict[str, Any], issuer: Issuer) -> str:
    kid = doc.get("kid")
    if not isinstance(kid, str) or not KID_RE.fullmatch(kid):
        raise KeyRejected("kid missing or not 1 to 128 characters among A-Z a-z 0-9 . _ -")
    if doc.keys() & _PRIVATE_MEMBERS:
        raise KeyRejected(f"key {kid} carries private or symmetric key material")
    alg = doc.get("alg")
    if alg is not None and alg not in issuer.algorithms:
        raise KeyRejected(
            f"key {kid} is for {shown(str(alg), 32)}, the issuer is pinned to {issuer.algorithms}"
        )
    use = doc.get("use")
    if use is not None and use != "sig":
        raise KeyRejected(f"key {kid} is for use {shown(str(use), 16)}, not sig")
    kty = doc.get("kty")
    rsa_ok = any(a.startswith(("RS", "PS")) for a in issuer.algorithms)
    crv = doc.get("crv")
    if kty == "RSA" and not rsa_ok:
        raise KeyRejected(f"key {kid} is RSA, the issuer's algorithms are {issuer.algorithms}")
    if kty == "EC" and _CURVE_ALG.get(crv if isinstance(crv, str) else "") not in issuer.algorithms:
        raise KeyRejected(f"key {kid} is on a curve the issuer's algorithms do not use")
    if kty not in {"RSA", "EC"}:
        raise KeyRejected(f"key {kid} has key type {shown(str(kty), 16)}, expected RSA or EC")
    return kid


@dataclass(frozen=True)
class _Held:
    """An issuer's imported keys and what the jwks service said about them."""

    keys: dict[str, jwk.JWK]
    published: list[dict[str, Any]]  # the set as stored, to skip re-importing an unchanged one
    fetched_at: float
    checked_at: float
    last_error: str


class KeyCache:
    """issuer -> kid -> JWK, filled from key sets, refreshed on an unknown kid."""

    def __init__(
        self,
        issuers: IssuerRegistry,
        *,
        refresh: Refresher | None = None,
        metrics: VerifierMetrics | None = None,
        max_age: float = DEFAULT_MAX_AGE_S,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._issuers = issuers
        self._refresh = refresh
        self._metrics = metrics or VerifierMetrics()
        self._max_age = max_age
        # The clock (unix seconds) that ages key sets; tests move it instead of waiting.
        self.now = now
        self._held: dict[str, _Held] = {}
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._metrics.watch_ages(self.ages)

    def get(self, issuer: str, kid: str) -> jwk.JWK | None:
        held = self._held.get(issuer)
        return None if held is None else held.keys.get(kid)

    def kids(self, issuer: str) -> frozenset[str]:
        held = self._held.get(issuer)
        return frozenset(held.keys) if held is not None else frozenset()

    def age(self, issuer: str) -> float | None:
        """Seconds since the issuer's set was fetched, or None when none is held."""
        held = self._held.get(issuer)
        return None if held is None else self.now() - held.fetched_at

    def usable(self, issuer: str) -> bool:
        """True when the issuer has at least one key in a set within the staleness bound."""
        held = self._held.get(issuer)
        return held is not None and bool(held.keys) and self.now() - held.fetched_at <= self._max_age

    def ages(self) -> list[tuple[str, float]]:
        now = self.now()
        return [(issuer, now - held.fetched_at) for issuer, held in list(self._held.items())]

    # -- filling ----------------------------------------------------------------------

    def apply(self, keyset: KeySet) -> bool:
        """Replace the issuer's keys with the usable ones of ``keyset``; False when ignored.

        A set for an issuer that is not configured is ignored, and so is a set older than
        the one held (a bucket update delivered after a newer refresh reply).
        """
        issuer = self._issuers.get(keyset.issuer)
        if issuer is None:
            log.warning("keyset_ignored", issuer=shown(keyset.issuer, 200), reason="issuer not configured")
            return False
        held = self._held.get(issuer.issuer)
        if held is not None and (keyset.fetched_at, keyset.checked_at) < (held.fetched_at, held.checked_at):
            log.info("keyset_ignored", issuer=issuer.issuer, reason="older than the set held")
            return False
        if held is not None and keyset.keys == held.published:
            # Only the jwks service's bookkeeping moved (a check, a claim, a failed fetch):
            # the imported keys stay, the new times and error count.
            keys = held.keys
        else:
            keys = self._import(issuer, keyset)
            log.info("keyset_loaded", issuer=issuer.issuer, kids=sorted(keys))
        self._held[issuer.issuer] = _Held(
            keys=keys,
            published=keyset.keys,
            fetched_at=keyset.fetched_at,
            checked_at=keyset.checked_at,
            last_error=keyset.last_error,
        )
        self._metrics.keys.labels(issuer.issuer).set(len(keys))
        return True

    def _import(self, issuer: Issuer, keyset: KeySet) -> dict[str, jwk.JWK]:
        keys: dict[str, jwk.JWK] = {}
        for doc in keyset.keys:
            try:
                kid, key = import_key(doc, issuer)
            except KeyRejected as exc:
                log.warning("key_skipped", issuer=issuer.issuer, reason=str(exc))
                continue
            if kid in keys:
                # Which of two keys a token means is ambiguous: keep the first, say so.
                log.warning("key_skipped", issuer=issuer.issuer, reason=f"duplicate kid {kid}")
                continue
            keys[kid] = key
        return keys

    def apply_entry(self, key: str, keyset: KeySet) -> None:
        """Apply one bucket entry, its seal checked (verifier/feed.py)."""
        issuer = issuer_of(key)
        if issuer is None or self._issuers.get(issuer) is None:
            log.warning("keyset_ignored", key=shown(key, 80), reason="not the key of a configured issuer")
            return
        if keyset.issuer != issuer:
            log.warning("keyset_ignored", issuer=issuer, reason="stored under another issuer's key")
            return
        self.apply(keyset)

    # -- lookup -----------------------------------------------------------------------

    async def key(self, issuer: Issuer, kid: str) -> jwk.JWK:
        """The key ``kid`` of ``issuer``, refreshing the issuer's set once if it is unknown
        or older than the staleness bound.

        Raises:
            InvalidToken: the issuer does not publish ``kid``, even after a refresh.
            Unavailable: the issuer's keys could not be obtained (no set, refresh failed),
                the set held is older than the staleness bound, or the kid is unknown while
                the last fetch of the issuer's keys failed.
        """
        name = issuer.issuer
        held = self._held.get(name)
        # The hot path: a known kid in a set within the bound; one clock read, no I/O.
        if held is not None and kid in held.keys and self.now() - held.fetched_at <= self._max_age:
            return held.keys[kid]
        if self._refresh is None:
            if held is None:
                raise Unavailable(f"keys of {name} are unavailable")
        else:
            try:
                # A known kid in a stale set asks for a refresh of the set, not for the kid
                # (the jwks service would answer "already there" without fetching).
                await self._refresh_once(name, "" if held is not None and kid in held.keys else kid)
            except Unavailable:
                # A stale set says more than "the refresh failed": refuse with its age.
                self._refuse_if_stale(name)
                raise
        self._refuse_if_stale(name)
        held = self._held.get(name)
        found = None if held is None else held.keys.get(kid)
        if found is not None:
            return found
        if held is not None and held.last_error:
            # The issuer could not be asked whether it publishes this kid (DESIGN.md, "Keys of
            # identity providers": an unknown kid during a failed refresh is a 503, not the
            # token's fault).
            log.info("key_unknown_during_outage", issuer=name, kid=kid, reason=held.last_error)
            msg = (
                f'key id "{kid}" is not among the keys held for {name}, '
                "and the last refresh of its keys failed"
            )
            raise Unavailable(msg)
        raise InvalidToken(f'key id "{kid}" is not among the published keys of {name}')

    def _refuse_if_stale(self, issuer: str) -> None:
        held = self._held.get(issuer)
        if held is None:
            return
        age = self.now() - held.fetched_at
        if age <= self._max_age:
            return
        self._metrics.stale_total.labels(issuer).inc()
        msg = (
            f"keys of {issuer} are stale: last fetched {age:.0f} s ago, "
            f"more than the {self._max_age:.0f} s allowed"
        )
        log.warning("keys_stale", issuer=issuer, age=round(age), max_age=self._max_age)
        raise Unavailable(msg)

    async def _refresh_once(self, issuer: str, kid: str) -> None:
        task = self._inflight.get(issuer)
        if task is None:
            task = asyncio.ensure_future(self._do_refresh(issuer, kid))
            self._inflight[issuer] = task
            task.add_done_callback(self._refresh_done(issuer))
        # shield: a caller that gives up must not cancel the refresh the others wait for.
        await asyncio.shield(task)

    def _refresh_done(self, issuer: str) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            if self._inflight.get(issuer) is task:
                del self._inflight[issuer]
            if not task.cancelled():
                task.exception()  # retrieved: every waiter may have gone

        return done

    async def _do_refresh(self, issuer: str, kid: str) -> None:
        assert self._refresh is not None  # noqa: S101  (only called when a refresher is set)
        counter = self._metrics.key_refresh_total
        try:
            keyset = await self._refresh(issuer, kid)
        except TrustpubError as exc:
            counter.labels(issuer, "unavailable").inc()
            log.warning(
                "key_refresh_failed", issuer=issuer, kid=kid, code=exc.code.value, reason=exc.description
            )
            raise Unavailable(f"keys of {issuer} are unavailable") from exc
        except Exception as exc:
            # Whatever went wrong on the way to the jwks service, the token is not at fault.
            counter.labels(issuer, "error").inc()
            log.exception("key_refresh_failed", issuer=issuer, kid=kid)
            raise Unavailable(f"keys of {issuer} are unavailable") from exc
        if keyset.issuer != issuer:
            counter.labels(issuer, "error").inc()
            log.error("key_refresh_failed", issuer=issuer, kid=kid, reason="reply is for another issuer")
            raise Unavailable(f"keys of {issuer} are unavailable")
        counter.labels(issuer, "ok").inc()
        self.apply(keyset)
