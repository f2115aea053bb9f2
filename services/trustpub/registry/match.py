"""Match a verified token to its publisher and record the mint: invariants 1 and 2.

One exchange is, in PostgreSQL:

1. find the candidate publishers by (issuer, provider, lookup key) and run the provider's
   rules; a publisher matches only tokens from the issuer it names;
2. claim the token id in ``used_tokens`` (the primary key serialises concurrent claims:
   of 20 concurrent presentations of one token exactly one inserts the row);
3. pin ``owner_id``/``repository_id`` if the publisher left them open (audited);
4. write the mint record and the ``exchange.succeeded`` audit row;

and the grant is returned only after that committed. Steps 2 and 4 are one statement
(data-modifying CTEs), so the common exchange costs two round trips: the candidate SELECT
and that statement, which is atomic on its own. Pinning needs the publisher row locked
(two first uses racing must not both pin), so when the chosen publisher has a field to
pin, the whole match is redone in a transaction with the candidates ``SELECT ... FOR
UPDATE``; a rival pin then waits, re-reads the pinned row and is judged against it. The
lock is not taken on every exchange: it would serialise all exchanges of one repository.
A rejected exchange writes nothing, so it does not consume the token id.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from trustpub.messages import (
    InternalError,
    InvalidPublisher,
    InvalidToken,
    ReusedToken,
    TrustpubError,
    Unavailable,
)
from trustpub.messages.v1 import MatchRequest, MintGrant, MintStatus, MintStatusRequest, RevokeRequest
from trustpub.providers import github
from trustpub.providers.rules import (
    ProviderRules,
    RuleResult,
    all_passed,
    failed,
    failure_descriptions,
    most_specific,
)
from trustpub.registry.config import Settings
from trustpub.registry.db import Database, insert_audit
from trustpub.registry.metrics import RegistryMetrics, provider_label

log = structlog.get_logger("trustpub.registry")

# PyPI's wording for every publisher mismatch (warehouse/oidc/views.py).
NO_PUBLISHER = "valid token, but no corresponding publisher"
# Kept past exp + leeway: clocks of the verifier replicas and of PostgreSQL differ a little,
# and a token id must outlive every instant at which some verifier still accepts the token
# (TOB-PYPI26-1: Warehouse kept it only until exp + 5 s, a 25 s replay window).
REPLAY_MARGIN_S = 60
# jti values are UUID-sized; a huge one is refused rather than indexed (btree rows are
# limited to about 2.7 kB, and the verifier should have refused it already).
MAX_TOKEN_KEY = 255
MAX_REASON = 200

PROVIDERS: Mapping[str, ProviderRules] = {github.NAME: github.PROVIDER}

_PROJECTS = """
    ARRAY(SELECT pr.name FROM publisher_projects pp JOIN projects pr ON pr.id = pp.project_id
          WHERE pp.publisher_id = p.id ORDER BY pr.normalized_name) AS projects
"""
_CANDIDATES = f"""
SELECT p.id, p.spec, {_PROJECTS}
FROM publishers p
WHERE p.issuer = $1 AND p.provider = $2 AND p.lookup_key = $3
"""  # noqa: S608  (constant SQL)
_CANDIDATES_LOCKED = _CANDIDATES + " FOR UPDATE OF p"

# Claim the token id; only if that inserted a row, write the mint and its audit row.
_CLAIM_AND_RECORD = """
WITH claim AS (
    INSERT INTO used_tokens (issuer, token_key, expires_at)
    VALUES ($1::text, $2::text, $3::timestamptz)
    ON CONFLICT DO NOTHING
    RETURNING 1
), mint AS (
    INSERT INTO mints (id, exchange_id, publisher_id, issuer, token_key, projects, provenance,
                       issued_at, expires_at)
    SELECT $4::uuid, $5::text, $6::uuid, $1::text, $2::text, $7::text[], $8::jsonb,
           $9::timestamptz, $10::timestamptz
    FROM claim
    RETURNING id
), audit AS (
    INSERT INTO audit_events (event_id, at, kind, exchange_id, publisher_id, mint_id, outcome, detail)
    SELECT $11::uuid, $9::timestamptz, 'exchange.succeeded', $5::text, $6::uuid, mint.id, 'succeeded',
           $12::jsonb
    FROM mint
    RETURNING 1
)
SELECT count(*) FROM audit
"""

_REVOKE = """
WITH m AS (
    SELECT expires_at FROM mints WHERE id = $1
), upd AS (
    UPDATE mints SET revoked_at = now(), revoked_reason = $2
    WHERE id = $1 AND revoked_at IS NULL
    RETURNING id, publisher_id, exchange_id
), audit AS (
    INSERT INTO audit_events (event_id, kind, exchange_id, publisher_id, mint_id, outcome, detail)
    SELECT $3::uuid, 'mint.revoked', upd.exchange_id, upd.publisher_id, upd.id, 'ok',
           jsonb_build_object('reason', $2::text)
    FROM upd
    RETURNING 1
)
SELECT m.expires_at, (SELECT count(*) FROM audit) AS revoked_now FROM m
"""

# A token whose publisher was removed is reported revoked: removal revokes at introspection.
_STATUS = """
SELECT m.expires_at, m.revoked_at, p.id IS NULL AS publisher_gone
FROM mints m LEFT JOIN publishers p ON p.id = m.publisher_id
WHERE m.id = $1
"""


def _no_publisher(reason: str) -> str:
    return f"{NO_PUBLISHER} ({reason})"


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


@dataclass
class Matcher:
    """The registry's request handlers; plain async functions of messages."""

    db: Database
    settings: Settings
    metrics: RegistryMetrics
    providers: Mapping[str, ProviderRules] = field(default_factory=lambda: PROVIDERS)

    # -- publisher.match ------------------------------------------------------------------

    async def match(self, req: MatchRequest) -> MintGrant:
        """Find the publisher, claim the token id, record the mint; return the grant.

        Raises:
            InvalidPublisher: no registered publisher accepts the claims (the description
                says which rules failed), or the provider is not supported.
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
            log.info("match_refused", provider=label, code=code, description=exc.description)
            raise
        except Exception:
            outcome, code = "error", "internal-error"
            raise
        finally:
            self.metrics.match_total.labels(label, outcome, code).inc()
            self.metrics.match_duration.labels(label).observe(time.perf_counter() - started)
        log.info("match_granted", provider=label, publisher_id=grant.publisher_id, mint_id=grant.mint_id)
        return grant

    async def _match(self, req: MatchRequest) -> MintGrant:
        token = req.token
        provider = self.providers.get(token.provider)
        if provider is None:
            raise InvalidPublisher(f"{token.provider} publishers are not supported yet")
        try:
            key = provider.lookup_key(token.claims)
        except InvalidPublisher as exc:
            raise InvalidPublisher(_no_publisher(exc.description)) from None
        if not token.token_key or len(token.token_key) > MAX_TOKEN_KEY:
            raise InvalidToken(f"the token id must be 1 to {MAX_TOKEN_KEY} characters long")
        try:
            retain_until = _utc(token.expires_at + self.settings.leeway + REPLAY_MARGIN_S)
        except (OverflowError, ValueError, OSError):
            raise InvalidToken("the token's expiry is out of range") from None

        async with self.db.connection() as conn:
            done = await self._attempt(conn, req, provider, key, retain_until, locked=False)
            if done is None:
                async with conn.transaction():
                    done = await self._attempt(conn, req, provider, key, retain_until, locked=True)
        if done is None:  # pragma: no cover  (the locked attempt always decides)
            raise InternalError("publisher match did not decide")
        grant, pinned = done
        self.metrics.audited("exchange.succeeded")
        if pinned:
            self.metrics.publishers_pinned.labels(provider.name).inc()
            self.metrics.audited("publisher.pinned")
            log.info(
                "publisher_pinned",
                provider=provider.name,
                publisher_id=grant.publisher_id,
                fields=sorted(pinned),
            )
        return grant

    async def _attempt(  # noqa: PLR0913  (the pieces of one exchange)
        self,
        conn: asyncpg.Connection,
        req: MatchRequest,
        provider: ProviderRules,
        key: str,
        retain_until: datetime,
        *,
        locked: bool,
    ) -> tuple[MintGrant, dict[str, str]] | None:
        """One try; ``None`` means "a field must be pinned: try again, locked"."""
        token = req.token
        claims = token.claims
        rows = await conn.fetch(
            _CANDIDATES_LOCKED if locked else _CANDIDATES, token.issuer, provider.name, key
        )
        if not rows:
            # Says nothing about other repositories' publishers: only the token's own identity.
            raise InvalidPublisher(
                _no_publisher(f"no trusted publisher is registered for {provider.identity(claims)}")
            )
        passing: list[tuple[int, Any]] = []
        refusals: list[RuleResult] = []
        for row in rows:
            results = provider.evaluate(row["spec"], claims)
            if not row["projects"]:
                results.append(
                    failed("projects", "a project", "none", "the publisher is not linked to any project")
                )
            if all_passed(results):
                passing.append((provider.specificity(row["spec"]), row))
            else:
                refusals.extend(results)
        if not passing:
            raise InvalidPublisher(_no_publisher("; ".join(failure_descriptions(refusals))))
        try:
            chosen = most_specific(passing)
        except InvalidPublisher as exc:
            raise InvalidPublisher(_no_publisher(exc.description)) from None
        pins = provider.pins(chosen["spec"], claims)
        if pins and not locked:
            return None

        now = time.time()
        issued_at = int(now)
        expires_at = issued_at + self.settings.token_lifetime
        mint_id = uuid.uuid4()
        provenance = provider.provenance(claims)
        provenance["issuer"] = token.issuer
        projects = list(chosen["projects"])
        recorded = await conn.fetchval(
            _CLAIM_AND_RECORD,
            token.issuer,
            token.token_key,
            retain_until,
            mint_id,
            req.exchange_id,
            chosen["id"],
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
            },
        )
        if not recorded:
            raise ReusedToken("invalid token: already used")
        if pins:
            await conn.execute(
                "UPDATE publishers SET spec = spec || $2::jsonb WHERE id = $1", chosen["id"], pins
            )
            await insert_audit(
                conn,
                "publisher.pinned",
                exchange_id=req.exchange_id,
                publisher_id=chosen["id"],
                mint_id=mint_id,
                outcome="ok",
                detail={
                    "provider": provider.name,
                    "issuer": token.issuer,
                    **{f: {"old": chosen["spec"].get(f), "new": v} for f, v in pins.items()},
                },
            )
        grant = MintGrant(
            mint_id=str(mint_id),
            publisher_id=str(chosen["id"]),
            projects=projects,
            issued_at=issued_at,
            expires_at=expires_at,
            provenance=provenance,
        )
        return grant, pins

    # -- mint.revoke / mint.status --------------------------------------------------------

    async def revoke(self, req: RevokeRequest) -> MintStatus:
        """Revoke a minted token once (audited as ``mint.revoked``); idempotent.

        Raises:
            InvalidToken: no mint record has this id.
            Unavailable: the database did not answer.
        """
        mint_id = _parse_uuid(req.mint_id)
        if mint_id is None:
            raise InvalidToken("unknown token")
        async with self.db.connection() as conn:
            row = await conn.fetchrow(_REVOKE, mint_id, req.reason[:MAX_REASON], uuid.uuid4())
        if row is None:
            raise InvalidToken("unknown token")
        if row["revoked_now"]:
            self.metrics.audited("mint.revoked")
            log.info("mint_revoked", mint_id=str(mint_id))
        return MintStatus(
            mint_id=str(mint_id), known=True, revoked=True, expires_at=int(row["expires_at"].timestamp())
        )

    async def status(self, req: MintStatusRequest) -> MintStatus:
        """Whether a minted token is known, and revoked (explicitly, or its publisher removed).

        Raises:
            Unavailable: the database did not answer.
        """
        mint_id = _parse_uuid(req.mint_id)
        if mint_id is None:
            return MintStatus(mint_id=req.mint_id, known=False)
        async with self.db.connection() as conn:
            row = await conn.fetchrow(_STATUS, mint_id)
        if row is None:
            return MintStatus(mint_id=req.mint_id, known=False)
        return MintStatus(
            mint_id=str(mint_id),
            known=True,
            revoked=row["revoked_at"] is not None or bool(row["publisher_gone"]),
            expires_at=int(row["expires_at"].timestamp()),
        )
