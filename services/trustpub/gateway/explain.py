"""``POST /_/oidc/explain``: why a token would (not) mint, rule by rule, minting nothing.

The token is verified first, as for an exchange (a bad signature, a wrong audience or an
expired token is refused with the usual error shape), then the registry judges it against
every publisher of the token's own identity (same issuer, same repository or project or
account). It reports in full (ids, projects, each rule: expected, actual, pass or fail) only
the publishers the token was plausibly meant for (same workflow file, pipeline file, account);
of the others only that they exist and which of those rules differs (DESIGN.md, "Explain").
The token id is not claimed, so the same token can be exchanged afterwards; every explanation
is audited (``exchange.explained``). Publishers of other identities are never shown. Operators
switch it off with ``TRUSTPUB_EXPLAIN_ENABLED=false`` (404; its route's switch, routes.py).
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from aiohttp import web

from trustpub.gateway.config import Settings
from trustpub.gateway.errors import EXCHANGE_ID, EXCHANGE_ID_RESPONSE_HEADER, from_error, json_response
from trustpub.gateway.limits import read_body
from trustpub.gateway.payload import token_from_body
from trustpub.messages import NotEnabled, TrustpubError
from trustpub.messages.endpoints import TOKEN_EXPLAIN
from trustpub.messages.v1 import ExplainCandidate, ExplainReply, VerifyRequest
from trustpub.runtime import Runtime

log = structlog.get_logger("trustpub.gateway")


def report(reply: ExplainReply) -> dict[str, Any]:
    """The public JSON shape of an explanation (stable; the NATS message may grow)."""

    def candidate(c: ExplainCandidate) -> dict[str, Any]:
        if c.withheld:
            return {"withheld": True, "differs": [r.rule for r in c.rules]}
        return {
            "publisher_id": c.publisher_id,
            "pending": c.pending,
            "projects": c.projects,
            "pending_project": c.pending_project or None,
            "expires_at": c.expires_at or None,
            "specificity": c.specificity,
            "passed": c.passed,
            "chosen": c.chosen,
            "pins": c.pins,
            "token_lifetime": c.token_lifetime,
            "rules": [
                {
                    "rule": r.rule,
                    "ok": r.ok,
                    "expected": r.expected,
                    "actual": r.actual,
                    "description": r.description,
                }
                for r in c.rules
            ],
        }

    return {
        "outcome": reply.outcome,
        "code": reply.code or None,
        "description": reply.description,
        "token": {
            "issuer": reply.issuer,
            "provider": reply.provider,
            "identity": reply.identity,
            "used": reply.token_used,
        },
        "publisher_id": reply.publisher_id or None,
        "publishers": [candidate(c) for c in reply.candidates],
    }


class Explainer:
    """The explain handler; holds the runtime it talks through."""

    def __init__(self, rt: Runtime, settings: Settings) -> None:
        self.rt = rt
        self.settings = settings

    async def handle(self, request: web.Request) -> web.Response:
        deadline = time.time() + self.settings.request_timeout
        exchange_id = request[EXCHANGE_ID]
        provider = "unknown"
        try:
            if not self.settings.enabled:
                raise NotEnabled("trusted publishing functionality not enabled")
            # Bounded in size (413) and time (408), as an exchange's body: limits.py.
            body = await read_body(
                request, max_bytes=self.settings.max_body_bytes, timeout=self.settings.body_timeout
            )
            token = token_from_body(body)
            # The verifier hands the verified token to the registry's read-only judgement.
            reply = await self.rt.call(TOKEN_EXPLAIN, VerifyRequest(token=token), deadline=deadline)
            provider = reply.provider
        except TrustpubError as exc:
            response = from_error(exc)
            provider = exc.context.get("provider", provider)
            log.info(
                "explain_refused",
                provider=provider,
                code=exc.code.value,
                reason=exc.description[:300],
            )
            response.headers[EXCHANGE_ID_RESPONSE_HEADER] = exchange_id
            return response
        log.info(
            "explain_answered",
            provider=provider,
            outcome=reply.outcome,
            candidates=len(reply.candidates),
        )
        return json_response(report(reply), headers={EXCHANGE_ID_RESPONSE_HEADER: exchange_id})
