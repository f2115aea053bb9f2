"""The issuers' key sets: when to fetch them, and what to answer the verifiers.

Policy (DESIGN.md, "Keys of identity providers"):

- every enabled issuer is fetched when the service starts (in the background: an issuer
  that is down must not keep the service from being started), then every
  ``refresh_interval`` seconds with +-10 % jitter so that replicas and issuers spread out. An
  issuer's ``Cache-Control: max-age`` may shorten the period, down to 5 minutes, never
  lengthen it: the interval is the bound on how long a withdrawn key keeps verifying;
- a verifier that meets an unknown ``kid`` asks for a refresh. Concurrent requests for one
  issuer share one fetch (single flight), and after an attempt, successful or not, the
  issuer is not fetched again on demand for ``refresh_cooldown`` seconds: within it the
  current set is the answer, so tokens naming random kids cannot make trustpub hammer an
  identity provider;
- a fetch that fails or is refused keeps the last good set; its ``checked_at`` moves and its
  ``last_error`` says why, so that a verifier answers an unknown kid with unavailable, not
  invalid-token;
- a set last fetched more than ``key_staleness`` seconds ago is not usable: verifiers refuse
  it, and :meth:`KeySets.usable` (this service's readiness) says so.

Several replicas share the bucket and do not fight: before fetching, a replica claims the
issuer's entry with a compare-and-set that moves ``checked_at`` and sets ``pending_since``.
The others see the claim (it starts their cooldown too) and wait for its result instead of
fetching; the loser of a simultaneous claim does the same. A claim left behind by a replica
that died expires after the fetch timeout and a slack. Only the very first fetch of an
issuer, when the bucket has no entry to claim, may happen once per replica; those writes are
whole validated sets, idempotent.

This module never touches NATS: it is given a store, a fetcher and an event hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import msgspec
import structlog
from prometheus_client import CollectorRegistry

from trustpub.jwks.fetch import FetchError
from trustpub.jwks.metrics import JwksMetrics
from trustpub.jwks.store import Stored
from trustpub.jwks.validate import ValidKeys
from trustpub.messages import InvalidPayload, Unavailable
from trustpub.messages.text import shown
from trustpub.messages.v1 import KeySet, KeySetRotated
from trustpub.providers.issuers import Issuer, IssuerRegistry
from trustpub.runtime.keysets import CLOCK_SLACK_S

log = structlog.get_logger("trustpub.jwks")

# Periodic refreshes are spread by +-10 %: replicas started together do not fetch together.
JITTER = 0.1
# A claim lives for the fetch timeout plus this: long enough for the claimant to store its
# result (one KV write), short enough that a replica that died mid-fetch delays the others
# by seconds only.
CLAIM_SLACK_S = 2.0
# How often a replica waiting for another one's fetch reads the entry again. Waiting happens
# at most once per cooldown per issuer and replica, so this costs a few dozen reads at worst.
FOLLOW_POLL_S = 0.05
# (DESIGN.md, "Keys of identity providers"): honour the issuer's Cache-Control max-age within [5 min, 60 min].
MAX_AGE_FLOOR_S = 300.0
MAX_AGE_CEILING_S = 3600.0


class KeySetStore(Protocol):
    async def get(self, issuer: str) -> Stored | None: ...
    async def put(self, keyset: KeySet) -> int: ...
    async def update(self, keyset: KeySet, revision: int) -> int | None: ...


class KeyFetcher(Protocol):
    async def fetch(self, iss: Issuer) -> ValidKeys: ...


RotationHook = Callable[[KeySetRotated], Awaitable[None]]


@dataclass(frozen=True)
class _Outcome:
    """What one fetch left: the issuer's current set (if any) and, on failure, why."""

    keyset: KeySet | None
    error: str = ""


class KeySets:
    """Fetches, validates and stores the key sets of the configured issuers."""

    def __init__(  # noqa: PLR0913  (collaborators and policy knobs, all keyword)
        self,
        issuers: IssuerRegistry,
        *,
        fetcher: KeyFetcher,
        store: KeySetStore,
        registry: CollectorRegistry,
        refresh_interval: float,
        refresh_cooldown: float,
        fetch_timeout: float = 5.0,
        key_staleness: float = 86400.0,
        on_rotated: RotationHook | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.issuers = issuers
        # The clock (unix seconds) for cooldowns and timestamps; tests move it.
        self.now = now
        self._fetcher = fetcher
        self._store = store
        self._interval = refresh_interval
        self._cooldown = refresh_cooldown
        self._claim_ttl = fetch_timeout + CLAIM_SLACK_S
        self._staleness = key_staleness
        self._on_rotated = on_rotated
        self._inflight: dict[str, asyncio.Task[_Outcome]] = {}
        self._attempted: dict[str, float] = {}
        self._latest: dict[str, KeySet] = {}
        self._last_error: dict[str, str] = {}
        self._max_age: dict[str, float] = {}
        # Set when an issuer's start fetch has finished (stored and announced, or failed).
        self._started: dict[str, asyncio.Event] = {}
        self.metrics = JwksMetrics(registry, self._ages)

    # -- endpoints ----------------------------------------------------------------------

    # -- policy -------------------------------------------------------------------------

    async def refresh(self, issuer: str, kid: str = "") -> KeySet:
        """The issuer's set after a refresh, or its current set when no refresh is due.

        No fetch happens when the stored set already has ``kid`` (another replica fetched
        it) and is within the staleness bound, or within the cooldown after the last
        attempt; concurrent callers share one fetch, and while another replica fetches, its
        result is the answer. A set whose ``last_error`` is set is the last good one, kept
        because the latest fetch failed.

        Raises:
            InvalidPayload: the issuer is not configured (nothing is fetched).
            Unavailable: there is no set and the fetch failed (or is not allowed yet).
        """
        iss = self._configured(issuer)
        current = await self._read(iss)
        if (
            kid
            and current is not None
            and self.now() - current.fetched_at <= self._staleness
            and any(k.get("kid") == kid for k in current.keys)
        ):
            return current
        flight = self._inflight.get(iss.issuer)
        if flight is None and current is not None and self._pending(current):
            # Another replica is fetching this issuer now: its result is the answer.
            flight = self._start(iss, "demand")
        if flight is None:
            left = self._cooldown_left(iss.issuer, current)
            if left > 0:
                self.metrics.refresh_total.labels(iss.issuer, "cooldown").inc()
                latest = self._latest.get(iss.issuer)
                if latest is not None:
                    return latest
                raise Unavailable(f"{self._no_keys(iss)}; the next fetch is allowed in {left:.0f} s")
            flight = self._start(iss, "demand")
        # Shielded: a caller that gives up does not cancel the fetch the others wait for.
        outcome = await asyncio.shield(flight)
        if outcome.keyset is None:
            raise Unavailable(f"the keys of issuer {iss.issuer!r} could not be fetched: {outcome.error}")
        return outcome.keyset

    async def usable(self, issuer: str) -> bool:
        """Readiness of one issuer: the bucket holds a set with keys, within the staleness
        bound (read from the bucket, so a replica that just started is ready as soon as
        another one has stored good sets).

        Raises:
            Unavailable: the bucket did not answer (the check reports not ready).
        """
        stored = await self._store.get(issuer)
        if stored is None or not stored.keyset.keys:
            return False
        return self.now() - stored.keyset.fetched_at <= self._staleness

    async def settled(self) -> None:
        """Until the start fetch of every enabled issuer has finished, and no fetch is in
        flight: each result stored, its change announced (or the failure recorded).

        A refresh request that arrives while a fetch is in flight joins it and gets its
        result, however long ago (by :attr:`now`) that fetch began; a test that moves the
        clock waits for this first, since a set in the bucket does not mean its fetch is
        over (announcing the change is the fetch's last step).
        """
        await asyncio.gather(*(started.wait() for started in list(self._started.values())))
        while self._inflight:
            await asyncio.wait(list(self._inflight.values()))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Refresh every enabled issuer now and periodically, until the block ends."""
        enabled = [i for i in self.issuers if i.enabled]
        log.info("jwks_issuers", issuers=[i.issuer for i in enabled])
        self._started = {i.issuer: asyncio.Event() for i in enabled}
        loops = [asyncio.create_task(self._loop(i), name=f"jwks-refresh {i.issuer}") for i in enabled]
        try:
            yield
        finally:
            pending = [*loops, *self._inflight.values()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- internals ----------------------------------------------------------------------

    def _configured(self, issuer: str) -> Issuer:
        iss = self.issuers.get(issuer)
        if iss is None or not iss.enabled:
            # Never fetched: only the operator's configuration names URLs (invariant 4,
            # DESIGN.md "Invariants").
            raise InvalidPayload(f"issuer {shown(issuer, 97)!r} is not a configured, enabled issuer")
        return iss

    async def _read(self, iss: Issuer) -> KeySet | None:
        """The freshest set known: the stored one, or the one this replica just wrote."""
        stored = await self._store.get(iss.issuer)
        if stored is not None:
            self._remember(stored.keyset)
        return self._latest.get(iss.issuer)

    def _remember(self, keyset: KeySet) -> None:
        known = self._latest.get(keyset.issuer)
        if known is None or (keyset.checked_at, keyset.fetched_at) >= (known.checked_at, known.fetched_at):
            self._latest[keyset.issuer] = keyset
            self.metrics.keys.labels(keyset.issuer).set(len(keyset.keys))

    def _cooldown_left(self, issuer: str, current: KeySet | None) -> float:
        now = self.now()
        attempts = [self._attempted.get(issuer, float("-inf"))]
        # A checked_at further ahead than the clock slack is a clock that is off, not a
        # recent attempt: it must not hold this replica in cooldown.
        if current is not None and current.checked_at <= now + CLOCK_SLACK_S:
            # Another replica's attempt counts too: several replicas make one cooldown.
            attempts.append(current.checked_at)
        elapsed = now - max(attempts)
        return min(self._cooldown, max(0.0, self._cooldown - elapsed))

    def _pending(self, keyset: KeySet) -> bool:
        """True while another replica's claim on the issuer's fetch is alive."""
        if not keyset.pending_since:
            return False
        return -CLOCK_SLACK_S <= self.now() - keyset.pending_since < self._claim_ttl

    def _start(self, iss: Issuer, trigger: str) -> asyncio.Task[_Outcome]:
        # Registered before the first await: a request arriving now joins this flight.
        task = asyncio.create_task(self._refresh_once(iss, trigger), name=f"jwks-fetch {iss.issuer}")
        self._inflight[iss.issuer] = task

        def landed(done: asyncio.Task[_Outcome]) -> None:
            if self._inflight.get(iss.issuer) is done:
                del self._inflight[iss.issuer]

        task.add_done_callback(landed)
        return task

    def _min_gap(self, iss: Issuer, trigger: str) -> float:
        """How recent another attempt may be for this one to be skipped."""
        if trigger == "periodic":
            # Checked recently (by another replica, or on demand): not due yet.
            return self._period(iss.issuer) / 2
        # On demand and at start: the cooldown, whichever replica made the last attempt (a
        # replica that restarts in a loop must not fetch at every start).
        return self._cooldown

    async def _refresh_once(self, iss: Issuer, trigger: str) -> _Outcome:
        """One fetch; never raises (except cancellation): failures become an outcome."""
        try:
            # Read before fetching: another replica may have stored a newer set, or be
            # fetching right now.
            try:
                prev = await self._store.get(iss.issuer)
            except Unavailable:
                prev = None
            if prev is not None:
                self._remember(prev.keyset)
                if self._pending(prev.keyset):
                    return await self._follow(iss, trigger)
                since = self.now() - prev.keyset.checked_at
                if -CLOCK_SLACK_S <= since < self._min_gap(iss, trigger):
                    if trigger == "demand":
                        self.metrics.refresh_total.labels(iss.issuer, "cooldown").inc()
                    latest = self._latest.get(iss.issuer, prev.keyset)
                    return _Outcome(latest, latest.last_error)
                prev = await self._claim(iss, prev)
                if prev is None:
                    return await self._follow(iss, trigger)
            self._attempted[iss.issuer] = self.now()
            started = time.perf_counter()
            try:
                valid = await self._fetcher.fetch(iss)
            except FetchError as exc:
                self.metrics.fetch_duration.labels(iss.issuer).observe(time.perf_counter() - started)
                return await self._failed(iss, prev, exc.reason, exc.result, trigger)
            self.metrics.fetch_duration.labels(iss.issuer).observe(time.perf_counter() - started)
            return await self._succeeded(iss, prev, valid, trigger)
        except Exception:  # a bug must not kill the refresh loop or strand the waiters
            log.exception("jwks_refresh_crashed", issuer=iss.issuer)
            self.metrics.refresh_total.labels(iss.issuer, "error").inc()
            return _Outcome(self._latest.get(iss.issuer), "internal error")

    async def _claim(self, iss: Issuer, prev: Stored) -> Stored | None:
        """Claim the issuer's fetch for this replica; None when another replica got there
        first. A bucket that does not answer is no reason to leave the verifiers without
        keys: the fetch goes ahead unclaimed."""
        now = self.now()
        claim = msgspec.structs.replace(prev.keyset, checked_at=now, pending_since=now)
        try:
            revision = await self._store.update(claim, prev.revision)
        except Unavailable:
            log.warning("jwks_store_failed", issuer=iss.issuer, step="claim")
            return prev
        if revision is None:
            return None
        self._remember(claim)
        return Stored(claim, revision)

    async def _follow(self, iss: Issuer, trigger: str) -> _Outcome:
        """Wait for another replica's fetch to land, and answer with its result."""
        self.metrics.refresh_total.labels(iss.issuer, "followed").inc()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._claim_ttl
        while True:
            try:
                stored = await self._store.get(iss.issuer)
            except Unavailable:
                stored = None
            if stored is not None:
                self._remember(stored.keyset)
                if not self._pending(stored.keyset):
                    return _Outcome(stored.keyset, stored.keyset.last_error)
            if loop.time() >= deadline:
                break
            await asyncio.sleep(FOLLOW_POLL_S)
        reason = "another replica's fetch did not finish in time"
        log.warning("jwks_follow_timeout", issuer=iss.issuer, trigger=trigger)
        latest = self._latest.get(iss.issuer)
        if latest is None:
            return _Outcome(None, reason)
        return _Outcome(msgspec.structs.replace(latest, last_error=reason, pending_since=0.0), reason)

    async def _failed(
        self, iss: Issuer, prev: Stored | None, reason: str, result: str, trigger: str
    ) -> _Outcome:
        self.metrics.refresh_total.labels(iss.issuer, result).inc()
        self._last_error[iss.issuer] = reason
        log.warning("jwks_fetch_failed", issuer=iss.issuer, reason=reason, result=result, trigger=trigger)
        if prev is None:
            return _Outcome(self._latest.get(iss.issuer), reason)
        # Keep the last good set; record that it was checked and why that failed, so that
        # other replicas respect the cooldown and verifiers know the set may be incomplete.
        # Conditional: a replica that stored a new set meanwhile wins.
        checked = msgspec.structs.replace(
            prev.keyset, checked_at=self.now(), pending_since=0.0, last_error=shown(reason, 297)
        )
        try:
            if await self._store.update(checked, prev.revision) is not None:
                self._remember(checked)
        except Unavailable:
            log.warning("jwks_store_failed", issuer=iss.issuer, step="failure")
            self._remember(checked)
        # This caller's answer says that this fetch failed, whatever another replica stored.
        return _Outcome(checked, reason)

    async def _succeeded(self, iss: Issuer, prev: Stored | None, valid: ValidKeys, trigger: str) -> _Outcome:
        for dropped in valid.dropped:
            self.metrics.keys_dropped.labels(iss.issuer, dropped.category).inc()
            log.warning("jwks_key_dropped", issuer=iss.issuer, kid=dropped.kid, reason=dropped.reason)
        at = self.now()
        keyset = KeySet(issuer=iss.issuer, keys=list(valid.keys), fetched_at=at, checked_at=at)
        # The set before this fetch: the stored one, or (the bucket unreadable) the last known.
        old = prev.keyset if prev is not None else self._latest.get(iss.issuer)
        result = "unchanged" if old is not None and old.keys == keyset.keys else "ok"
        try:
            # A whole validated set, written unconditionally: two replicas storing what they
            # both fetched leave one good set, whichever lands last.
            await self._store.put(keyset)
        except Unavailable as exc:
            # The caller still gets the keys; the next refresh stores them.
            log.error("jwks_store_failed", issuer=iss.issuer, reason=exc.description)  # noqa: TRY400  (no traceback wanted)
            result = "error"
        self.metrics.refresh_total.labels(iss.issuer, result).inc()
        self._latest[iss.issuer] = keyset
        self.metrics.keys.labels(iss.issuer).set(len(keyset.keys))
        self._last_error.pop(iss.issuer, None)
        if valid.max_age is None:
            self._max_age.pop(iss.issuer, None)
        else:
            self._max_age[iss.issuer] = valid.max_age
        log.info(
            "jwks_refreshed",
            issuer=iss.issuer,
            kids=valid.kids,
            changed=result == "ok",
            dropped=len(valid.dropped),
            trigger=trigger,
            next_refresh_s=self._period(iss.issuer),
        )
        await self._announce(old, keyset)
        return _Outcome(keyset)

    async def _announce(self, old: KeySet | None, new: KeySet) -> None:
        before = {str(k.get("kid")): k for k in old.keys} if old is not None else {}
        after = {str(k.get("kid")): k for k in new.keys}
        replaced = sorted(kid for kid in before.keys() & after.keys() if before[kid] != after[kid])
        if old is not None and before.keys() == after.keys() and not replaced:
            return
        event = KeySetRotated(
            event_id=_event_id(old, new),
            at=new.fetched_at,
            issuer=new.issuer,
            old_kids=sorted(before),
            new_kids=sorted(after),
            replaced_kids=replaced,
        )
        log.info("jwks_rotated", issuer=new.issuer, old_kids=event.old_kids, new_kids=event.new_kids)
        if self._on_rotated is None:
            return
        try:
            await self._on_rotated(event)
        except Exception as exc:  # noqa: BLE001  (an event that cannot be published never fails a refresh)
            log.warning("jwks_event_failed", issuer=new.issuer, error=type(exc).__name__, detail=str(exc))

    def _period(self, issuer: str) -> float:
        """Seconds until the next periodic refresh of ``issuer`` (before jitter)."""
        max_age = self._max_age.get(issuer)
        if max_age is None:
            return self._interval
        # The issuer's max-age, within [5 min, 60 min], may make refreshes more frequent,
        # never rarer than the operator's interval: that bounds how long a key the issuer
        # withdrew keeps verifying.
        return min(self._interval, max(MAX_AGE_FLOOR_S, min(MAX_AGE_CEILING_S, max_age)))

    async def _loop(self, iss: Issuer) -> None:
        delay = 0.0
        while True:
            if delay:
                await asyncio.sleep(delay)
            try:
                await self._periodic(iss, initial=not delay)
            except Exception:  # the loop outlives any one failure
                log.exception("jwks_periodic_failed", issuer=iss.issuer)
            self._started[iss.issuer].set()
            delay = self._period(iss.issuer) * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311  (jitter, not a secret)

    async def _periodic(self, iss: Issuer, *, initial: bool) -> None:
        flight = self._inflight.get(iss.issuer)
        if flight is None:
            flight = self._start(iss, "start" if initial else "periodic")
        await flight

    def _no_keys(self, iss: Issuer) -> str:
        reason = self._last_error.get(iss.issuer)
        detail = f" (last fetch: {reason})" if reason else ""
        return f"no keys of issuer {iss.issuer!r} are available{detail}"

    def _ages(self) -> Iterable[tuple[str, float]]:
        now = self.now()
        return [(issuer, now - ks.fetched_at) for issuer, ks in list(self._latest.items())]


def _event_id(old: KeySet | None, new: KeySet) -> str:
    """The same id for the same change, whichever replica reports it: JetStream drops the
    duplicate (Nats-Msg-Id) when two replicas store the same new set after the same old one."""
    digest = hashlib.sha256()
    digest.update(new.issuer.encode())
    digest.update(repr(old.fetched_at if old is not None else None).encode())
    digest.update(json.dumps(new.keys, sort_keys=True).encode())
    return digest.hexdigest()[:32]
