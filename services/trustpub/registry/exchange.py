"""Match a verified token to its publisher and record the mint: invariants 1 and 2 (DESIGN.md, "Invariants").

One exchange is, in PostgreSQL:

1. find the candidates by (issuer, provider, lookup key), publishers and pending publishers
   in one query, and run the provider's rules on each; a publisher matches only tokens from
   the issuer it names. A pending publisher that passes wins (PyPI's order: pending first);
2. claim the token id in ``used_tokens`` (the primary key serialises concurrent claims:
   of 20 concurrent presentations of one token exactly one inserts the row);
3. pin ids the publisher left open (audited);
4. write the mint record and the ``exchange.succeeded`` audit row;

and the grant is returned only after that committed. Steps 2 and 4 are one statement
(data-modifying CTEs), atomic on its own. The candidates of recent identities are kept in
memory with the value of ``registry_generation`` they were read at (migration 0003: any
change to publishers, pending publishers or their projects moves it), and that statement
claims the token id only while the generation has not moved; when it has, it writes nothing
and the match is made again from a fresh read. So the common exchange (a cached identity, no id
to pin) is one round trip, and a cached candidate never outlives a change. A refusal is never
decided from the cache. Pinning needs the publisher row locked
(two first uses racing must not both pin), so when the chosen publisher has a field to
pin, the whole match is redone in a transaction with the candidates ``SELECT ... FOR
UPDATE``; a rival pin then waits, re-reads the pinned row and is judged against it. The
lock is not taken on every exchange: it would serialise all exchanges of one repository.
A rejected exchange writes nothing, so it does not consume the token id.

A pending publisher's first exchange is one transaction with its row locked: create the
project, turn the pending publisher into a normal one (same id) linked to it, pin, claim the
token id and record the mint. Of two exchanges racing for one pending publisher, the second
waits for the lock, finds the row gone and is refused with ``invalid-pending-publisher``
without consuming its token id (presented again, it mints through the new publisher), or
with ``invalid-reuse-token`` if it was the same token. If the project exists already, the
pending publisher is deleted (committed, as PyPI does) and the exchange refused.

A publisher (or pending one) registered without its owner's id (``needs_confirmation``,
migration 0007) is matched like any other, but when it is chosen nothing is minted or
converted: the first token pins the ids it left open (its row locked, as above; audited) and
the exchange is refused until an operator confirms the pinned id (DESIGN.md, "Owners are
confirmed"). The cache never answers for it.

``explain.py`` runs step 1 and reports every rule of every candidate; ``mints.py`` answers for
the records written here.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from trustpub.messages import (
    InternalError,
    InvalidPendingPublisher,
    InvalidPublisher,
    InvalidToken,
    ReusedToken,
    TrustpubError,
    Unavailable,
)
from trustpub.messages.v1 import (
    MatchRequest,
    MintGrant,
    VerifiedToken,
)
from trustpub.providers import PROVIDERS
from trustpub.providers.base import Provider
from trustpub.providers.rules import (
    RuleResult,
    all_passed,
    failed,
    failure_descriptions,
    most_specific,
    quote,
)
from trustpub.registry import audit
from trustpub.registry.audit import insert_audit
from trustpub.registry.config import Settings
from trustpub.registry.metrics import RegistryMetrics, provider_label
from trustpub.registry.pool import Database
from trustpub.runtime import current_delivery

log = structlog.get_logger("trustpub.registry")

# PyPI's wording for every publisher mismatch (warehouse/oidc/views.py).
NO_PUBLISHER = "valid token, but no corresponding publisher"
# PyPI's wording when a pending publisher's project was created another way first.
PROJECT_EXISTS = "valid token, but project already exists"
# Kept past exp + leeway: clocks of the verifier replicas and of PostgreSQL differ a little,
# and a token id must outlive every instant at which some verifier still accepts the token
# (TOB-PYPI26-1: Warehouse kept it only until exp + 5 s, a 25 s replay window).
REPLAY_MARGIN_S = 60
# jti values are UUID-sized; a huge one is refused rather than indexed (btree rows are
# limited to about 2.7 kB, and the verifier should have refused it already).
MAX_TOKEN_KEY = 255
# A grant is committed only while this much of the exchange's deadline is left: signing and
# answering take milliseconds, so a grant committed later would most likely reach a gateway
# that has answered 503 (DESIGN.md, "Exactly once, as the publisher sees it").
COMMIT_MARGIN_S = 0.25
# How long after an undelivered attempt's lease ended, with neither a delivery nor a release
# reported by its gateway, the registry waits before granting the record again: a gateway
# reports within a fraction of a second unless it died (same section).
RELEASE_GRACE_S = 10.0
# A gateway reports a delivery within milliseconds: a presentation of the same token this soon
# after its grant is answered as PyPI answers a second presentation; later, while the lease
# runs with no report, it is asked to come back (same section).
REPORT_QUIET_S = 1.0
# The lease of a grant made outside a request (tests calling the matcher directly).
DEFAULT_LEASE_S = 5.0
LATE = "the exchange's deadline passed before the publisher was matched"


_PROJECTS = """
    ARRAY(SELECT pr.name FROM publisher_projects pp JOIN projects pr ON pr.id = pp.project_id
          WHERE pp.publisher_id = p.id ORDER BY pr.normalized_name) AS projects
"""
_PUBLISHER_FIELDS = f"""
    false AS pending, p.id, p.spec, {_PROJECTS}, ''::text AS project_name,
    NULL::timestamptz AS expires_at, false AS expired,
    (SELECT n FROM registry_generation) AS generation, p.needs_confirmation
"""  # noqa: S608  (constant SQL)
# Publishers and pending publishers of the token's identity, in one round trip. Expired
# pending ones are returned too (until the purge) so that a refusal can say so; they are
# never chosen.
CANDIDATES = f"""
SELECT {_PUBLISHER_FIELDS}
FROM publishers p
WHERE p.issuer = $1 AND p.provider = $2 AND p.lookup_key = $3
UNION ALL
SELECT true, q.id, q.spec, '{{}}'::text[], q.project_name, q.expires_at, q.expires_at <= now(),
       (SELECT n FROM registry_generation), q.needs_confirmation
FROM pending_publishers q
WHERE q.issuer = $1 AND q.provider = $2 AND q.lookup_key = $3
"""  # noqa: S608  (constant SQL)
_PUBLISHERS_LOCKED = f"""
SELECT {_PUBLISHER_FIELDS}
FROM publishers p
WHERE p.issuer = $1 AND p.provider = $2 AND p.lookup_key = $3
FOR UPDATE OF p
"""  # noqa: S608  (constant SQL)
_PENDING_LOCKED = "SELECT * FROM pending_publishers WHERE id = $1 AND expires_at > now() FOR UPDATE"
_PIN_PUBLISHER = "UPDATE publishers SET spec = spec || $2::jsonb WHERE id = $1"
_PIN_PENDING = "UPDATE pending_publishers SET spec = spec || $2::jsonb WHERE id = $1"
TOKEN_USED = "SELECT EXISTS (SELECT 1 FROM used_tokens WHERE issuer = $1 AND token_key = $2)"
_PUBLISHER_PROJECTS = """
SELECT ARRAY(SELECT pr.name FROM publisher_projects pp JOIN projects pr ON pr.id = pp.project_id
             WHERE pp.publisher_id = $1 ORDER BY pr.normalized_name)
"""
# A pending publisher becomes a normal one under its own id; an identical normal publisher
# (same unique key) is re-used instead, as Warehouse's reify does.
_CONVERT = """
INSERT INTO publishers (id, provider, issuer, lookup_key, unique_key, spec, environment, registrant)
SELECT id, provider, issuer, lookup_key, unique_key, spec, environment, registrant
FROM pending_publishers WHERE id = $1
ON CONFLICT (unique_key) DO NOTHING
RETURNING id
"""
# Claim the token id (only while the registry generation is still $13, when given: the
# candidates were read at it, and only before $14, the last instant a grant can still be
# minted and delivered within the exchange's deadline; clock_timestamp(), not now(): the
# statement may have waited for a lock); only if that inserted a row, write the mint record,
# leased to this exchange until its deadline $15, and its ``mint.granted`` audit row.
# Answers how many audit rows it wrote, the generation it saw and whether it came too late.
_GRANTED_AUDIT = audit.insert_rows(
    "event_id, at, kind, exchange_id, publisher_id, mint_id, outcome, detail",
    """SELECT $11::uuid, $9::timestamptz, 'mint.granted', $5::text, $6::uuid, mint.id, 'granted',
           $12::jsonb
    FROM mint""",
    idempotent=False,
)
_CLAIM_AND_RECORD = f"""
WITH gen AS (
    SELECT n, clock_timestamp() >= $14::timestamptz AS late FROM registry_generation
), claim AS (
    INSERT INTO used_tokens (issuer, token_key, expires_at)
    SELECT $1::text, $2::text, $3::timestamptz FROM gen
    WHERE ($13::bigint IS NULL OR gen.n = $13::bigint) AND NOT gen.late
    ON CONFLICT DO NOTHING
    RETURNING 1
), mint AS (
    INSERT INTO mints (id, exchange_id, publisher_id, issuer, token_key, projects, provenance,
                       issued_at, expires_at, attempt_exchange_id, lease_until)
    SELECT $4::uuid, $5::text, $6::uuid, $1::text, $2::text, $7::text[], $8::jsonb,
           $9::timestamptz, $10::timestamptz, $5::text, $15::timestamptz
    FROM claim
    RETURNING id
), audit AS (
    {_GRANTED_AUDIT}
    RETURNING 1
)
SELECT (SELECT count(*) FROM audit) AS recorded, gen.n AS generation, gen.late FROM gen
"""  # noqa: S608  (constant SQL)

# The token id was claimed before: grant its mint record again, to this exchange, when no
# token of it was delivered and no other exchange may still deliver one (DESIGN.md, "Exactly
# once, as the publisher sees it"): the holder of the lease is this same exchange (its gateway
# retried), or the holder's gateway answered without delivering (``released_at``), or the
# lease ended more than $7 seconds ago and neither a delivery nor a release was reported.
_REGRANTED_AUDIT = audit.insert_rows(
    "event_id, kind, exchange_id, publisher_id, mint_id, outcome, detail",
    """SELECT $8::uuid, 'mint.regranted', $3::text, m.publisher_id, m.id, 'granted',
           $9::jsonb || jsonb_build_object('attempt', m.attempts, 'first_exchange_id', m.exchange_id)
    FROM m WHERE m.new_attempt""",
    idempotent=False,
)
_REGRANT = f"""
WITH m AS (
    UPDATE mints
    SET attempt_exchange_id = $3::text, lease_until = $4::timestamptz, released_at = NULL,
        attempts = mints.attempts + (mints.attempt_exchange_id <> $3::text)::int
    FROM (SELECT attempt_exchange_id AS previous FROM mints
          WHERE issuer = $1::text AND token_key = $2::text) p
    WHERE issuer = $1::text AND token_key = $2::text AND publisher_id = $5::uuid
      AND delivered_at IS NULL AND revoked_at IS NULL AND expires_at > clock_timestamp()
      AND clock_timestamp() < $6::timestamptz
      AND (attempt_exchange_id = $3::text OR released_at IS NOT NULL
           OR lease_until + make_interval(secs => $7::float8) <= clock_timestamp())
    RETURNING mints.id, mints.publisher_id, mints.projects, mints.provenance, mints.issued_at,
              mints.expires_at, mints.attempts, mints.exchange_id, p.previous <> $3::text AS new_attempt
), audit AS (
    -- The same exchange asking again (its gateway retried) is not a new grant.
    {_REGRANTED_AUDIT}
    RETURNING 1
)
SELECT m.*, (SELECT count(*) FROM audit) AS recorded FROM m
"""  # noqa: S608  (constant SQL)
# Why a claimed token was not granted again.
_MINT_OF_TOKEN = """
SELECT publisher_id, delivered_at, revoked_at, released_at, expires_at <= clock_timestamp() AS expired,
       clock_timestamp() >= $3::timestamptz AS late,
       extract(epoch FROM lease_until - clock_timestamp())::float8 AS lease_left,
       extract(epoch FROM clock_timestamp() - issued_at)::float8 AS age
FROM mints WHERE issuer = $1 AND token_key = $2
"""


def _lease() -> tuple[datetime, datetime]:
    """(the last instant a grant may be committed, the end of its lease): the exchange's
    deadline, less the time it takes to sign and deliver the token for the former."""
    delivery = current_delivery()
    deadline = delivery.deadline if delivery is not None else time.time() + DEFAULT_LEASE_S
    return _utc(deadline - COMMIT_MARGIN_S), _utc(deadline)


def _statement_timeout() -> float | None:
    """The statement that would commit a grant is cancelled when the caller gives up (a lock
    held on the hot tables must not make it commit a grant that is answered 503)."""
    delivery = current_delivery()
    return None if delivery is None else max(delivery.remaining, 0.01)


def _caller_still_waiting() -> None:
    """Claim nothing for a caller that gave up: the gateway answered 503 at its deadline, and
    a token id claimed now would be spent for a client that never sees the upload token.

    Raises:
        Unavailable: the exchange's deadline has passed.
    """
    delivery = current_delivery()
    if delivery is not None and delivery.remaining <= COMMIT_MARGIN_S:
        raise Unavailable(LATE)


def no_publisher(reason: str) -> str:
    return f"{NO_PUBLISHER} ({reason})"


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One publisher or pending publisher of the token's identity, judged."""

    id: uuid.UUID
    pending: bool
    spec: dict[str, Any]
    projects: list[str]
    project_name: str
    expires_at: datetime | None
    results: list[RuleResult]
    specificity: int
    # Registered without its owner's id, not confirmed yet: mints nothing (DESIGN.md, "Owners
    # are confirmed").
    needs_confirmation: bool = False

    @property
    def passed(self) -> bool:
        return all_passed(self.results)


def judge(provider: Provider, row: Mapping[str, Any], claims: Mapping[str, Any]) -> Candidate:
    """Run the provider's rules, and the registry's own conditions, on one candidate row."""
    spec = dict(row["spec"])
    results = provider.evaluate(spec, claims)
    if row["pending"]:
        if row["expired"]:
            at = row["expires_at"].isoformat(timespec="seconds")
            results.append(
                failed(
                    "expires_at",
                    "an unexpired pending publisher",
                    at,
                    f"the pending publisher for project {quote(row['project_name'])} expired at {at}; "
                    "register it again",
                )
            )
    elif not row["projects"]:
        results.append(failed("projects", "a project", "none", "the publisher is not linked to any project"))
    return Candidate(
        id=row["id"],
        pending=bool(row["pending"]),
        spec=spec,
        projects=list(row["projects"]),
        project_name=row["project_name"],
        expires_at=row["expires_at"],
        results=results,
        specificity=provider.specificity(spec),
        needs_confirmation=bool(row["needs_confirmation"]),
    )


def decide(provider: Provider, claims: Mapping[str, Any], candidates: Sequence[Candidate]) -> Candidate:
    """The candidate an exchange uses: a passing pending publisher first (PyPI's order), else
    the most specific passing publisher.

    Raises:
        InvalidPublisher: no candidate, none passed (the description lists every failure
            once), or two equally specific ones passed.
    """
    if not candidates:
        # Says nothing about other identities' publishers: only the token's own identity.
        raise InvalidPublisher(
            no_publisher(f"no trusted publisher is registered for {provider.identity(claims)}")
        )
    for pending in (True, False):
        passing = [(c.specificity, c) for c in candidates if c.pending is pending and c.passed]
        if passing:
            try:
                return most_specific(passing)
            except InvalidPublisher as exc:
                raise InvalidPublisher(no_publisher(exc.description)) from None
    refusals = [r for c in candidates for r in c.results]
    raise InvalidPublisher(no_publisher("; ".join(failure_descriptions(refusals))))


def _awaiting(provider: Provider, candidate: Candidate, pins: Mapping[str, str]) -> str:
    """Why a publisher registered without its owner's id mints nothing yet."""
    field_name = provider.owner_field or ""
    value = str(pins.get(field_name) or candidate.spec.get(field_name) or "")
    what = "pending publisher" if candidate.pending else "publisher"
    return (
        f"the {what} {candidate.id} was registered without its owner's id and mints nothing until an "
        f"operator confirms {provider.owner_claim} {quote(value)}, the id its first token pinned "
        f"(trustpub publisher confirm {candidate.id} --{field_name.replace('_', '-')} {value}); this "
        "token was not used: present it again once the publisher is confirmed"
    )


def project_exists(project: str) -> str:
    return (
        f"{PROJECT_EXISTS} (project {quote(project)} was created after this pending publisher was "
        "registered; the pending publisher has been removed: register a trusted publisher for the "
        "existing project instead)"
    )


def awaiting_verdict(
    provider: Provider, chosen: Candidate, claims: Mapping[str, Any]
) -> tuple[str, str, str]:
    """What explain reports for a chosen publisher awaiting its confirmation."""
    pins = provider.pins(chosen.spec, claims)
    pinning = (
        f"an exchange would pin {', '.join(f'{f} {v}' for f, v in pins.items())} and be refused: "
        if pins
        else ""
    )
    if chosen.pending:
        return "refused", InvalidPendingPublisher.code.value, pinning + _awaiting(provider, chosen, pins)
    return "refused", InvalidPublisher.code.value, pinning + no_publisher(_awaiting(provider, chosen, pins))


@dataclass(frozen=True, slots=True)
class _Done:
    grant: MintGrant
    pins: dict[str, str]
    converted: bool = False
    regranted: bool = False


def _environment_ignored(
    provider: Provider, spec: Mapping[str, Any], claims: Mapping[str, Any]
) -> dict[str, str]:
    """The token ran in an environment the publisher does not require.

    PyPI e-mails the owners each time (its Ultralytics follow-up): the publisher would keep
    working from any other environment, or none. trustpub records it on the audit row and
    logs a warning, so operators and owners can constrain the publisher.
    """
    if provider.narrowing_field != "environment" or spec.get("environment"):
        return {}
    environment = claims.get("environment")
    if not isinstance(environment, str) or not environment:
        return {}
    log.warning(
        "publisher_environment_ignored",
        provider=provider.name,
        environment=environment[:255],
        hint="register the publisher with --environment to require it",
    )
    return {"environment_ignored": environment[:255]}


# Identities whose candidates are kept in memory (least recently used ones are forgotten):
# a few rows each, so this bounds the registry's memory to a few megabytes.
CANDIDATE_CACHE_SIZE = 10_000

CacheKey = tuple[str, str, str]  # issuer, provider, lookup key


class CandidateCache:
    """The candidate rows of recent identities, with the registry generation they were read at."""

    def __init__(self, size: int = CANDIDATE_CACHE_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[CacheKey, tuple[int, list[Mapping[str, Any]]]] = OrderedDict()

    def get(self, key: CacheKey) -> tuple[int, list[Mapping[str, Any]]] | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: CacheKey, generation: int, rows: list[Mapping[str, Any]]) -> None:
        self._entries[key] = (generation, rows)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def prepare(providers: Mapping[str, Provider], token: VerifiedToken) -> tuple[Provider, str]:
    """The token's provider and the lookup key of its identity.

    Raises:
        InvalidPublisher: the provider is not supported, or a claim the key needs is missing or
            malformed (the cause's description is in the message).
    """
    provider = providers.get(token.provider)
    if provider is None:
        raise InvalidPublisher(f"{token.provider} publishers are not supported yet")
    try:
        key = provider.lookup_key(token.claims)
    except InvalidPublisher as exc:
        raise InvalidPublisher(no_publisher(exc.description)) from None
    return provider, key


def token_lifetime(spec: Mapping[str, Any], default: int) -> int:
    """Seconds a token minted for this publisher lives: its own lifetime, else the service's."""
    lifetime = spec.get("token_lifetime")
    return lifetime if isinstance(lifetime, int) else default


@dataclass
class Matcher:
    """The registry's request handlers; plain async functions of messages."""

    db: Database
    settings: Settings
    metrics: RegistryMetrics
    providers: Mapping[str, Provider] = field(default_factory=lambda: PROVIDERS)
    candidates: CandidateCache = field(default_factory=CandidateCache)

    # -- publisher.match ------------------------------------------------------------------

    async def match(self, req: MatchRequest) -> MintGrant:
        """Find the publisher, claim the token id, record the mint; return the grant.

        Raises:
            InvalidPublisher: no registered publisher accepts the claims (the description
                says which rules failed), or the provider is not supported.
            InvalidPendingPublisher: the matching pending publisher's project exists already
                (the pending publisher is removed), or a concurrent exchange just used it.
            ReusedToken: the token id was claimed before.
            InvalidToken: the token id or expiry is unusable.
            Unavailable: the database did not answer.
        """
        label = provider_label(req.token.provider)
        started = time.perf_counter()
        outcome, code = "granted", ""
        try:
            grant = await self._match(req)
        except TrustpubError as exc:
            code = exc.code.value
            if isinstance(exc, Unavailable):
                outcome = "unavailable"
            elif isinstance(exc, InternalError):
                outcome = "error"
            else:
                outcome = "refused"
            if isinstance(exc, ReusedToken):
                self.metrics.replays_refused.labels(label).inc()
            # The gateway sees only this refusal: whose token it was goes into its audit record.
            exc.context.update(issuer=req.token.issuer, provider=req.token.provider)
            log.info("match_refused", provider=label, code=code, description=exc.description)
            raise
        except Exception:
            outcome, code = "error", "internal-error"
            raise
        finally:
            self.metrics.match_total.labels(label, outcome, code).inc()
            self.metrics.match_duration.labels(label).observe(time.perf_counter() - started)
        log.debug("match_granted", provider=label, publisher_id=grant.publisher_id, mint_id=grant.mint_id)
        return grant

    async def _match(self, req: MatchRequest) -> MintGrant:
        token = req.token
        provider, key = prepare(self.providers, token)
        if not token.token_key or len(token.token_key) > MAX_TOKEN_KEY:
            raise InvalidToken(f"the token id must be 1 to {MAX_TOKEN_KEY} characters long")
        try:
            retain_until = _utc(token.expires_at + self.settings.leeway + REPLAY_MARGIN_S)
        except (OverflowError, ValueError, OSError) as exc:
            raise InvalidToken("the token's expiry is out of range") from exc

        done = await self._match_cached(req, provider, key, retain_until)
        if done is None:
            done = await self._match_fresh(req, provider, key, retain_until)
        return self._granted(provider, done)

    async def _match_cached(
        self, req: MatchRequest, provider: Provider, key: str, retain_until: datetime
    ) -> _Done | None:
        """The hot path: candidates from memory, one statement. None when the cache has no
        answer it may give (not cached, a refusal, a pending publisher, an id to pin, or the
        candidates changed since they were read): the fresh path decides."""
        token = req.token
        cached = self.candidates.get((token.issuer, provider.name, key))
        if cached is None:
            return None
        generation, rows = cached
        try:
            chosen = decide(provider, token.claims, [judge(provider, row, token.claims) for row in rows])
        except InvalidPublisher:
            return None
        if chosen.pending or chosen.needs_confirmation or provider.pins(chosen.spec, token.claims):
            return None
        _caller_still_waiting()
        async with self.db.connection() as conn:
            done = await self._record(
                conn,
                req,
                provider,
                chosen.id,
                chosen.spec,
                chosen.projects,
                retain_until,
                generation=generation,
            )
        if done is None:
            self.candidates.clear()  # the generation moved: every cached identity may be stale
            self.metrics.candidates_stale.inc()
        return done

    async def _match_fresh(
        self, req: MatchRequest, provider: Provider, key: str, retain_until: datetime
    ) -> _Done:
        token = req.token
        async with self.db.connection() as conn:
            rows = await conn.fetch(CANDIDATES, token.issuer, provider.name, key)
            if rows:
                self.candidates.put((token.issuer, provider.name, key), rows[0]["generation"], rows)
            candidates = [judge(provider, row, token.claims) for row in rows]
            chosen = decide(provider, token.claims, candidates)
            _caller_still_waiting()
            done: _Done | None
            if chosen.pending:
                done = await self._convert(conn, req, provider, chosen, retain_until)
            elif chosen.needs_confirmation and not provider.pins(chosen.spec, token.claims):
                raise InvalidPublisher(no_publisher(_awaiting(provider, chosen, {})))
            elif not provider.pins(chosen.spec, token.claims):
                done = await self._record(
                    conn, req, provider, chosen.id, chosen.spec, chosen.projects, retain_until
                )
            else:
                async with conn.transaction():
                    rows = await conn.fetch(_PUBLISHERS_LOCKED, token.issuer, provider.name, key)
                    relocked = [judge(provider, row, token.claims) for row in rows]
                    # The pending ones failed above; keep their reasons for the description.
                    chosen = decide(provider, token.claims, relocked + [c for c in candidates if c.pending])
                    pins = provider.pins(chosen.spec, token.claims)
                    if chosen.needs_confirmation:
                        await self._pin_unconfirmed(conn, req, provider, chosen, pins)
                    else:
                        done = await self._record(
                            conn,
                            req,
                            provider,
                            chosen.id,
                            chosen.spec,
                            chosen.projects,
                            retain_until,
                            pins=pins,
                        )
                if chosen.needs_confirmation:
                    self._pinned_unconfirmed(provider, chosen, pins)
                    raise InvalidPublisher(no_publisher(_awaiting(provider, chosen, pins)))
        assert done is not None  # noqa: S101  (no generation was given: nothing can be stale)
        return done

    def _granted(self, provider: Provider, done: _Done) -> MintGrant:
        grant = done.grant
        if not done.regranted:
            self.metrics.audited("mint.granted")
        if done.converted:
            self.metrics.pending_converted.labels(provider.name).inc()
            for kind in ("pending.converted", "project.created"):
                self.metrics.audited(kind)
            log.info(
                "pending_publisher_converted",
                provider=provider.name,
                publisher_id=grant.publisher_id,
                projects=grant.projects,
            )
        if done.pins:
            self.metrics.publishers_pinned.labels(provider.name).inc()
            self.metrics.audited("publisher.pinned")
            log.info(
                "publisher_pinned",
                provider=provider.name,
                publisher_id=grant.publisher_id,
                fields=sorted(done.pins),
            )
        return grant

    async def _pin_unconfirmed(
        self,
        conn: asyncpg.Connection,
        req: MatchRequest,
        provider: Provider,
        chosen: Candidate,
        pins: Mapping[str, str],
    ) -> None:
        """Pin the ids a publisher awaiting its confirmation left open, mint nothing
        (DESIGN.md, "Owners are confirmed"); in the caller's transaction, its row locked."""
        if not pins:
            return
        await conn.execute(_PIN_PENDING if chosen.pending else _PIN_PUBLISHER, chosen.id, dict(pins))
        await insert_audit(
            conn,
            "pending.pinned" if chosen.pending else "publisher.pinned",
            exchange_id=req.exchange_id,
            publisher_id=chosen.id,
            outcome="ok",
            detail={
                "provider": provider.name,
                "issuer": req.token.issuer,
                **{f: {"old": chosen.spec.get(f), "new": v} for f, v in pins.items()},
                "needs_confirmation": True,
            },
        )

    def _pinned_unconfirmed(self, provider: Provider, chosen: Candidate, pins: Mapping[str, str]) -> None:
        if pins:
            self.metrics.publishers_pinned.labels(provider.name).inc()
            self.metrics.audited("pending.pinned" if chosen.pending else "publisher.pinned")
        log.warning(
            "publisher_needs_confirmation",
            provider=provider.name,
            publisher_id=str(chosen.id),
            pending=chosen.pending,
            pinned=sorted(pins),
            hint="trustpub publisher confirm",
        )

    async def _record(  # noqa: PLR0913, PLR0917  (the pieces of one exchange)
        self,
        conn: asyncpg.Connection,
        req: MatchRequest,
        provider: Provider,
        publisher_id: uuid.UUID,
        spec: Mapping[str, Any],
        projects: list[str],
        retain_until: datetime,
        *,
        pins: Mapping[str, str] | None = None,
        converted: bool = False,
        generation: int | None = None,
    ) -> _Done | None:
        """Claim the token id and write the mint record and its audit row (one statement);
        pin ``pins`` on the publisher first. Within a caller's transaction when pinning or
        converting, so that a refused claim undoes them. With ``generation`` (the candidates
        came from the cache), nothing is written and None returned if the registry generation
        has moved since.

        Raises:
            ReusedToken: the token id was claimed before.
        """
        token = req.token
        pins = dict(pins or {})
        issued_at = int(time.time())
        # The publisher's own lifetime when it set one (validated 300..3600 s at registration).
        expires_at = issued_at + token_lifetime(spec, self.settings.token_lifetime)
        mint_id = uuid.uuid4()
        provenance = provider.provenance(token.claims)
        provenance["issuer"] = token.issuer
        if pins:
            await conn.execute(
                "UPDATE publishers SET spec = spec || $2::jsonb WHERE id = $1", publisher_id, pins
            )
            await insert_audit(
                conn,
                "publisher.pinned",
                exchange_id=req.exchange_id,
                publisher_id=publisher_id,
                mint_id=mint_id,
                outcome="ok",
                detail={
                    "provider": provider.name,
                    "issuer": token.issuer,
                    **{f: {"old": spec.get(f), "new": v} for f, v in pins.items()},
                },
            )
        commit_by, lease_until = _lease()
        recorded, current, late = await conn.fetchrow(
            _CLAIM_AND_RECORD,
            token.issuer,
            token.token_key,
            retain_until,
            mint_id,
            req.exchange_id,
            publisher_id,
            projects,
            provenance,
            _utc(issued_at),
            _utc(expires_at),
            uuid.uuid4(),
            {
                "issuer": token.issuer,
                "provider": provider.name,
                # Never the token; a prefix of its hash ties the row to a client's log.
                "token_hash_prefix": token.token_hash[:16],
                **_environment_ignored(provider, spec, token.claims),
            },
            generation,
            commit_by,
            lease_until,
            timeout=_statement_timeout(),
        )
        if not recorded:
            if generation is not None and current != generation:
                return None
            if late:
                raise Unavailable(LATE)
            return await self._regrant(conn, req, provider, publisher_id, commit_by, lease_until)
        grant = MintGrant(
            mint_id=str(mint_id),
            publisher_id=str(publisher_id),
            projects=projects,
            issued_at=issued_at,
            expires_at=expires_at,
            provenance=provenance,
            issuer=token.issuer,
            provider=provider.name,
        )
        return _Done(grant=grant, pins=pins, converted=converted)

    async def _regrant(  # noqa: PLR0913, PLR0917  (the pieces of one exchange)
        self,
        conn: asyncpg.Connection,
        req: MatchRequest,
        provider: Provider,
        publisher_id: uuid.UUID,
        commit_by: datetime,
        lease_until: datetime,
    ) -> _Done:
        """The token id was claimed before: the same mint record again, when nothing of it
        was delivered and no other exchange may still deliver it (``_REGRANT``).

        Raises:
            ReusedToken: a token of the record was delivered, or the record is revoked,
                expired or another publisher's.
            Unavailable: another exchange of this token ended moments ago and its gateway has
                not said yet whether it delivered (``retry_after`` in the context says when
                to present the token again), or this exchange's deadline is too close.
        """
        token = req.token
        row = await conn.fetchrow(
            _REGRANT,
            token.issuer,
            token.token_key,
            req.exchange_id,
            lease_until,
            publisher_id,
            commit_by,
            RELEASE_GRACE_S,
            uuid.uuid4(),
            {"issuer": token.issuer, "provider": provider.name, "token_hash_prefix": token.token_hash[:16]},
            timeout=_statement_timeout(),
        )
        if row is not None:
            if row["new_attempt"]:
                self.metrics.regranted.labels(provider.name).inc()
                self.metrics.audited("mint.regranted")
                log.info("mint_regranted", mint_id=str(row["id"]), attempt=row["attempts"])
            grant = MintGrant(
                mint_id=str(row["id"]),
                publisher_id=str(row["publisher_id"]),
                projects=list(row["projects"]),
                issued_at=int(row["issued_at"].timestamp()),
                expires_at=int(row["expires_at"].timestamp()),
                provenance=dict(row["provenance"]),
                issuer=token.issuer,
                provider=provider.name,
            )
            return _Done(grant=grant, pins={}, regranted=True)
        state = await conn.fetchrow(_MINT_OF_TOKEN, token.issuer, token.token_key, commit_by)
        if (
            state is None
            or state["delivered_at"] is not None
            or state["revoked_at"] is not None
            or state["expired"]
            or state["publisher_id"] != publisher_id
        ):
            raise ReusedToken("invalid token: already used")
        if state["late"]:
            raise Unavailable(LATE)
        lease_left = state["lease_left"]
        if lease_left > 0 and state["released_at"] is None and state["age"] < REPORT_QUIET_S:
            # Granted a moment ago: a concurrent presentation, or a replay right after a success
            # whose report is on its way. PyPI's answer to a second presentation.
            raise ReusedToken("invalid token: already used")
        # The exchange holding the record is slow, or its gateway died without a word (a
        # delivery would have been reported by now): come back once it can no longer deliver.
        wait = max(1, math.ceil(max(lease_left, 0) + RELEASE_GRACE_S))
        error = Unavailable(
            "an earlier exchange of this token has not reported whether it delivered its upload "
            f"token; present the same token again in {wait} s"
        )
        error.context["retry_after"] = str(wait)
        raise error

    async def _convert(
        self,
        conn: asyncpg.Connection,
        req: MatchRequest,
        provider: Provider,
        chosen: Candidate,
        retain_until: datetime,
    ) -> _Done:
        """A pending publisher's first exchange, in one transaction (see the module doc).

        Raises:
            InvalidPendingPublisher: the project exists (the pending publisher is deleted,
                committed), or a concurrent exchange used or removed it just now.
            ReusedToken: the token id was claimed before (nothing is converted).
            InvalidPublisher: the identical normal publisher that would be re-used refuses
                the token (nothing is converted).
        """
        token = req.token
        if chosen.needs_confirmation:
            await self._hold_unconfirmed(conn, req, provider, chosen)
        exists: str | None = None
        async with conn.transaction():
            row = await conn.fetchrow(_PENDING_LOCKED, chosen.id)
            if row is None:
                # Converted (or removed, or expired) by someone else since the candidate query.
                if await conn.fetchval(TOKEN_USED, token.issuer, token.token_key):
                    raise ReusedToken("invalid token: already used")
                raise InvalidPendingPublisher(
                    f"the pending publisher for project {quote(chosen.project_name)} was used or removed "
                    "by a concurrent request just now; this token was not used: present it again"
                )
            registrant = row["registrant"]
            project = await conn.fetchrow(
                "INSERT INTO projects (name, normalized_name, created_by) VALUES ($1, $2, $3) "
                "ON CONFLICT (normalized_name) DO NOTHING RETURNING id, name",
                row["project_name"],
                row["normalized_name"],
                registrant,
            )
            if project is None:
                # Created another way first: the pending publisher is void. Deleted and
                # committed although the exchange fails, as PyPI does.
                await conn.execute("DELETE FROM pending_publishers WHERE id = $1", chosen.id)
                await insert_audit(
                    conn,
                    "pending.invalidated",
                    exchange_id=req.exchange_id,
                    publisher_id=chosen.id,
                    outcome="removed",
                    code="invalid-pending-publisher",
                    detail={
                        "provider": provider.name,
                        "issuer": token.issuer,
                        "project": row["project_name"],
                        "registrant": registrant,
                        "reason": "project already exists",
                    },
                )
                exists = row["project_name"]
            else:
                done = await self._reify(conn, req, provider, row, project, retain_until)
        if exists is not None:
            self.metrics.audited("pending.invalidated")
            raise InvalidPendingPublisher(project_exists(exists))
        return done

    async def _hold_unconfirmed(
        self, conn: asyncpg.Connection, req: MatchRequest, provider: Provider, chosen: Candidate
    ) -> None:
        """A pending publisher awaiting its confirmation: judged again on its locked row (a rival
        first token or the operator may have pinned its owner's id since the candidate query),
        its open ids pinned, the exchange refused. Returns only when it was confirmed (or used,
        or removed) meanwhile: the conversion goes on and says so.

        Raises:
            InvalidPendingPublisher: it awaits its confirmation (committed: the pins).
            InvalidPublisher: its pinned ids refuse the token.
        """
        async with conn.transaction():
            row = await conn.fetchrow(_PENDING_LOCKED, chosen.id)
            if row is None:
                return
            spec = dict(row["spec"])
            results = provider.evaluate(spec, req.token.claims)
            if not all_passed(results):
                raise InvalidPublisher(no_publisher("; ".join(failure_descriptions(results))))
            if not row["needs_confirmation"]:
                return
            chosen = dataclasses.replace(chosen, spec=spec)
            pins = provider.pins(spec, req.token.claims)
            await self._pin_unconfirmed(conn, req, provider, chosen, pins)
        self._pinned_unconfirmed(provider, chosen, pins)
        raise InvalidPendingPublisher(_awaiting(provider, chosen, pins))

    async def _reify(  # noqa: PLR0913, PLR0917  (the pieces of one conversion)
        self,
        conn: asyncpg.Connection,
        req: MatchRequest,
        provider: Provider,
        row: Mapping[str, Any],
        project: Mapping[str, Any],
        retain_until: datetime,
    ) -> _Done:
        token, claims = req.token, req.token.claims
        pending_id = row["id"]
        created = await conn.fetchval(_CONVERT, pending_id)
        if created is not None:
            publisher_id, spec = created, dict(row["spec"])
        else:
            existing = await conn.fetchrow(
                "SELECT id, spec, needs_confirmation FROM publishers WHERE unique_key = $1 FOR UPDATE",
                row["unique_key"],
            )
            results = provider.evaluate(existing["spec"], claims)
            if not all_passed(results):
                raise InvalidPublisher(no_publisher("; ".join(failure_descriptions(results))))
            if existing["needs_confirmation"]:
                # The publisher it would join awaits its own confirmation: nothing is converted.
                joined = Candidate(
                    id=existing["id"],
                    pending=False,
                    spec=dict(existing["spec"]),
                    projects=[],
                    project_name="",
                    expires_at=None,
                    results=results,
                    specificity=0,
                    needs_confirmation=True,
                )
                pins = provider.pins(joined.spec, claims)
                raise InvalidPublisher(no_publisher(_awaiting(provider, joined, pins)))
            publisher_id, spec = existing["id"], dict(existing["spec"])
        await conn.execute(
            "INSERT INTO publisher_projects (publisher_id, project_id) VALUES ($1, $2)",
            publisher_id,
            project["id"],
        )
        await conn.execute("DELETE FROM pending_publishers WHERE id = $1", pending_id)
        by = {"by": row["registrant"], "via": "pending publisher", "exchange_id": req.exchange_id}
        await insert_audit(conn, "project.created", outcome="ok", detail={"project": project["name"], **by})
        await insert_audit(
            conn,
            "pending.converted",
            exchange_id=req.exchange_id,
            publisher_id=publisher_id,
            outcome="ok",
            detail={
                "pending_id": str(pending_id),
                "provider": provider.name,
                "issuer": token.issuer,
                "project": project["name"],
                "registrant": row["registrant"],
                "reused_publisher": created is None,
            },
        )
        projects = list(await conn.fetchval(_PUBLISHER_PROJECTS, publisher_id))
        done = await self._record(
            conn,
            req,
            provider,
            publisher_id,
            spec,
            projects,
            retain_until,
            pins=provider.pins(spec, claims),
            converted=True,
        )
        assert done is not None  # noqa: S101  (no generation was given: nothing can be stale)
        return done


# --- the replay store -----------------------------------------------------------------------


async def purge_used_tokens(conn: asyncpg.Connection) -> int:
    """Delete used token ids whose retention has passed; never one still retained."""
    status: str = await conn.execute("DELETE FROM used_tokens WHERE expires_at < now()")
    return int(status.rsplit(" ", 1)[-1])
