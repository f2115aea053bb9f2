"""``publisher.explain``: what an exchange would decide for a token and why, rule by rule
(DESIGN.md, "Explain"). It runs the exchange's first step (``exchange.py``: the candidates of
the token's identity, judged by the provider's rules) and writes only its audit row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from trustpub.messages import InvalidPendingPublisher, InvalidPublisher, ReusedToken
from trustpub.messages.v1 import ExplainCandidate, ExplainReply, ExplainRequest, ExplainRule
from trustpub.providers import PROVIDERS
from trustpub.providers.base import Provider
from trustpub.providers.rules import failure_descriptions, quote
from trustpub.registry.audit import insert_audit
from trustpub.registry.config import Settings
from trustpub.registry.exchange import (
    CANDIDATES,
    TOKEN_USED,
    Candidate,
    awaiting_verdict,
    decide,
    judge,
    no_publisher,
    prepare,
    project_exists,
    token_lifetime,
)
from trustpub.registry.metrics import RegistryMetrics, provider_label
from trustpub.registry.pool import Database
from trustpub.registry.publishers import normalize_name

log = structlog.get_logger("trustpub.registry")


@dataclass
class Explainer:
    """The handler of ``publisher.explain``."""

    db: Database
    settings: Settings
    metrics: RegistryMetrics
    providers: Mapping[str, Provider] = field(default_factory=lambda: PROVIDERS)

    async def explain(self, req: ExplainRequest) -> ExplainReply:
        """What ``match`` would decide for this token and why, rule by rule, for the
        candidates of the token's own identity that it was plausibly meant for; of the others
        only that they exist and which rule differs (DESIGN.md, "Explain"). Claims no token
        id, pins nothing, creates nothing; audited as ``exchange.explained``.

        Raises:
            Unavailable: the database did not answer.
        """
        token = req.token
        label = provider_label(token.provider)
        reply = await self._explain(req)
        log.info("explained", provider=label, outcome=reply.outcome, code=reply.code)
        return reply

    async def _explain(self, req: ExplainRequest) -> ExplainReply:
        token = req.token
        claims = token.claims
        provider = self.providers.get(token.provider)
        identity = provider.identity(claims) if provider is not None else token.provider
        base: dict[str, Any] = {"issuer": token.issuer, "provider": token.provider, "identity": identity}
        try:
            provider, key = prepare(self.providers, token)
        except InvalidPublisher as exc:
            reply = ExplainReply(
                **base, outcome="refused", code=exc.code.value, description=exc.description, candidates=[]
            )
            async with self.db.connection() as conn:
                await self._audit_explained(conn, req, reply, addressed=0)
            return reply
        async with self.db.connection() as conn:
            rows = await conn.fetch(CANDIDATES, token.issuer, provider.name, key)
            used = bool(await conn.fetchval(TOKEN_USED, token.issuer, token.token_key))
            candidates = [judge(provider, row, claims) for row in rows]
            addressed = [c for c in candidates if provider.addresses(c.results)]
            chosen: Candidate | None = None
            try:
                chosen = decide(provider, claims, candidates)
            except InvalidPublisher as exc:
                outcome, code = "refused", exc.code.value
                description = self._withheld_description(provider, claims, candidates, addressed, exc)
            else:
                outcome, code, description = (
                    awaiting_verdict(provider, chosen, claims)
                    if chosen.needs_confirmation
                    else await self._verdict(conn, chosen, used)
                )
            base["token_used"] = used
            reports = [
                self._report(provider, c, claims, chosen=c is chosen)
                if c in addressed
                else self._withheld(provider, c)
                for c in candidates
            ]
            reply = ExplainReply(
                **base,
                outcome=outcome,
                code=code,
                description=description,
                candidates=reports,
                publisher_id=str(chosen.id) if chosen is not None and outcome != "refused" else "",
            )
            await self._audit_explained(conn, req, reply, addressed=len(addressed))
        return reply

    def _withheld_description(
        self,
        provider: Provider,
        claims: Mapping[str, Any],
        candidates: Sequence[Candidate],
        addressed: Sequence[Candidate],
        refusal: InvalidPublisher,
    ) -> str:
        """The refusal, told from the publishers the token was meant for; of the others only
        how many there are and which rules differ."""
        others = [c for c in candidates if c not in addressed]
        if not others:
            return refusal.description
        differing = sorted(
            {r.rule for c in others for r in c.results if not r.ok and r.rule in provider.addressed_by}
        )
        tail = (
            f"{len(others)} other publisher(s) of {provider.identity(claims)} were registered for another "
            f"{' / '.join(differing)}"
        )
        if not addressed:
            what = " / ".join(differing)
            return no_publisher(
                f"no publisher of {provider.identity(claims)} names this token's {what}; {tail}"
            )
        failures = failure_descriptions([r for c in addressed for r in c.results])
        return no_publisher("; ".join([*failures, tail]))

    @staticmethod
    def _withheld(provider: Provider, c: Candidate) -> ExplainCandidate:
        """A publisher the token was not meant for: that it exists and which rules differ."""
        return ExplainCandidate(
            publisher_id="",
            pending=False,
            projects=[],
            passed=False,
            chosen=False,
            specificity=0,
            rules=[
                ExplainRule(rule=r.rule, ok=False, expected="", actual="", description="differs")
                for r in c.results
                if not r.ok and r.rule in provider.addressed_by
            ],
            withheld=True,
        )

    async def _audit_explained(
        self, conn: asyncpg.Connection, req: ExplainRequest, reply: ExplainReply, *, addressed: int
    ) -> None:
        await insert_audit(
            conn,
            "exchange.explained",
            exchange_id=req.exchange_id,
            publisher_id=reply.publisher_id or None,
            outcome=reply.outcome,
            code=reply.code,
            detail={
                "issuer": reply.issuer,
                "provider": reply.provider,
                "identity": reply.identity[:300],
                "token_hash_prefix": req.token.token_hash[:16],
                "candidates": len(reply.candidates),
                "reported_in_full": addressed,
            },
        )
        self.metrics.audited("exchange.explained")

    async def _verdict(self, conn: asyncpg.Connection, chosen: Candidate, used: bool) -> tuple[str, str, str]:  # noqa: FBT001
        reused = ("refused", ReusedToken.code.value, "invalid token: already used")
        if chosen.pending:
            existing = await conn.fetchval(
                "SELECT name FROM projects WHERE normalized_name = $1", normalize_name(chosen.project_name)
            )
            if existing is not None:
                return "refused", InvalidPendingPublisher.code.value, project_exists(chosen.project_name)
            if used:
                return reused
            return (
                "would-create-project",
                "",
                (
                    f"an exchange would create project {quote(chosen.project_name)}, turn this pending "
                    f"publisher into a normal one, and mint a token valid {self._lifetime(chosen.spec)} s"
                ),
            )
        if used:
            return reused
        names = ", ".join(chosen.projects)
        return (
            "would-mint",
            "",
            f"an exchange would mint a token for {names}, valid {self._lifetime(chosen.spec)} s",
        )

    def _lifetime(self, spec: Mapping[str, Any]) -> int:
        return token_lifetime(spec, self.settings.token_lifetime)

    def _report(
        self, provider: Provider, c: Candidate, claims: Mapping[str, Any], *, chosen: bool
    ) -> ExplainCandidate:
        return ExplainCandidate(
            publisher_id=str(c.id),
            pending=c.pending,
            projects=c.projects,
            passed=c.passed,
            chosen=chosen,
            specificity=c.specificity,
            rules=[
                ExplainRule(
                    rule=r.rule, ok=r.ok, expected=r.expected, actual=r.actual, description=r.description
                )
                for r in c.results
            ],
            pending_project=c.project_name,
            expires_at=int(c.expires_at.timestamp()) if c.expires_at is not None else 0,
            pins=provider.pins(c.spec, claims) if c.passed else {},
            token_lifetime=self._lifetime(c.spec),
        )
