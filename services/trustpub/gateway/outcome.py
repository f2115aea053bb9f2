"""How an exchange ends: the one place that writes its answer's consequences.

Every exchange ends in exactly one of these, each with its event (the audit row, and for a
grant the delivery report or the release: events.py), its metrics and its log line:

- **delivered** (:meth:`Outcomes.deliver`): the token was written to the client; the delivery is
  reported and the mint record is single use from then on;
- **undelivered**: the client hung up first; the record is released (before the handler
  returns) so that the client's retry gets it;
- **refused** (:meth:`Outcomes.refuse`): a stage refused, or the deadline passed; a 503 that may
  follow a committed grant is answered only after its release is stored;
- **rate limited** (:meth:`Outcomes.rate_limited`): the first 429 of a client's run, audited.

(DESIGN.md, "Exactly once, as the publisher sees it".)
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from prometheus_client import Counter, Histogram

from trustpub.gateway.errors import EXCHANGE_ID_RESPONSE_HEADER, from_error, json_response
from trustpub.gateway.events import EventPublisher
from trustpub.messages import TrustpubError, Unavailable
from trustpub.messages.v1 import ExchangeEvent, MintedToken
from trustpub.runtime import Runtime
from trustpub.runtime.metrics import LATENCY_BUCKETS

log = structlog.get_logger("trustpub.gateway")

# How long a 503 waits for its release to be stored before it is answered anyway.
SETTLE_TIMEOUT_S = 1.0


@dataclass
class Exchange:
    """One exchange in flight: its id, when it started, and its token once read."""

    id: str
    started: float = field(default_factory=time.perf_counter)
    token: str = ""

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class Outcomes:
    """Ends exchanges: events, metrics and log lines of each outcome."""

    def __init__(self, rt: Runtime) -> None:
        self.events = EventPublisher(rt)
        self.exchanges = Counter(
            "trustpub_exchange_requests_total",
            "Token exchanges answered, by provider, outcome (minted, refused, unavailable) and error code.",
            ["provider", "outcome", "code"],
            registry=rt.registry,
        )
        self.duration = Histogram(
            "trustpub_exchange_duration_seconds",
            "Time from request to response of a token exchange, by outcome.",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=rt.registry,
        )

    async def deliver(self, request: web.Request, ex: Exchange, minted: MintedToken) -> web.Response:
        """Write the minted token to the client, then report whether it got there."""
        provider = minted.provider or "unknown"
        response = json_response(
            {"success": True, "token": minted.token, "expires": minted.expires},
            headers={EXCHANGE_ID_RESPONSE_HEADER: ex.id},
        )
        transport = request.transport
        try:
            if transport is None or transport.is_closing():
                raise ConnectionResetError
            await response.prepare(request)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            # Not delivered: release the record, so that the client's retry gets it.
            gone = Unavailable("the client hung up before its answer was sent")
            gone.context.update(issuer=minted.issuer, provider=provider)
            await self.events.settle(self._failed(ex, gone, "unavailable"), timeout=SETTLE_TIMEOUT_S)
            self.exchanges.labels(provider, "unavailable", "unavailable").inc()
            log.info("exchange_undelivered", mint_id=minted.mint_id, reason="client gone")
            return response
        # Written to the client: report the delivery (the record is single use from then on).
        self.events.record(
            ExchangeEvent(
                event_id=uuid.uuid4().hex,
                exchange_id=ex.id,
                at=time.time(),
                outcome="succeeded",
                issuer=minted.issuer,
                provider=provider,
                token_hash_prefix=_token_hash(ex.token)[:16],
                publisher_id=minted.publisher_id,
                mint_id=minted.mint_id,
            )
        )
        self.exchanges.labels(provider, "minted", "").inc()
        elapsed = ex.elapsed()
        self.duration.labels("minted").observe(elapsed)
        log.debug(
            "exchange_succeeded",
            provider=provider,
            issuer=minted.issuer,
            publisher_id=minted.publisher_id,
            mint_id=minted.mint_id,
            projects=minted.projects,
            duration_ms=round(elapsed * 1000, 2),
        )
        return response

    async def refuse(self, ex: Exchange, exc: TrustpubError) -> web.Response:
        """The answer to a refused exchange, once its refusal is reported."""
        response = from_error(exc)
        outcome = "unavailable" if response.status == 503 else "refused"
        # Whose token it was: what the stage that refused it knew (verifier or registry).
        provider = exc.context.get("provider", "unknown")
        code = exc.code.value if response.status != 503 else "unavailable"
        self.exchanges.labels(provider, outcome, code).inc()
        elapsed = ex.elapsed()
        self.duration.labels(outcome).observe(elapsed)
        log.info(
            "exchange_failed",
            provider=provider,
            code=code,
            reason=exc.description[:300],
            duration_ms=round(elapsed * 1000, 2),
        )
        event = self._failed(ex, exc, code)
        if response.status == 503 and ex.token:
            # A grant may have been committed for this exchange: release it before the
            # client can retry (DESIGN.md, "Exactly once, as the publisher sees it").
            await self.events.settle(event, timeout=SETTLE_TIMEOUT_S)
        else:
            self.events.record(event)
        response.headers[EXCHANGE_ID_RESPONSE_HEADER] = ex.id
        return response

    def rate_limited(self, exchange_id: str, code: str, description: str) -> None:
        """Audit the first 429 of a client's run of refusals (limits.py counts the others)."""
        self.events.record(_failure_event(exchange_id, code, description))

    @staticmethod
    def _failed(ex: Exchange, exc: TrustpubError, code: str) -> ExchangeEvent:
        return _failure_event(ex.id, code, exc.description[:500], context=exc.context, token=ex.token)


def _failure_event(
    exchange_id: str,
    code: str,
    description: str,
    *,
    context: Mapping[str, str] | None = None,
    token: str = "",
) -> ExchangeEvent:
    """The audit record of an answer that delivered no token; it releases the exchange's
    mint record, if one was granted to it."""
    return ExchangeEvent(
        event_id=uuid.uuid4().hex,
        exchange_id=exchange_id,
        at=time.time(),
        outcome="failed",
        code=code,
        description=description,
        # Whose token it was, as far as the stage that refused it knew.
        issuer=(context or {}).get("issuer", ""),
        provider=(context or {}).get("provider", "unknown"),
        token_hash_prefix=_token_hash(token)[:16] if token else "",
    )


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
