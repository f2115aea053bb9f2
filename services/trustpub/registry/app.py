"""The registry service: endpoints, the audit consumer and the replay-store purge."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import msgspec
import structlog
from nats.aio.msg import Msg

from trustpub.messages import ErrorCode, Unavailable
from trustpub.messages.endpoints import (
    ADMIN_CALL,
    EXCHANGE_FAILED,
    EXCHANGE_SUCCEEDED,
    MINT_REVOKE,
    MINT_STATUS,
    PUBLISHER_EXPLAIN,
    PUBLISHER_MATCH,
    Event,
)
from trustpub.messages.v1 import ExchangeEvent, ExchangeEvents, MatchRequest, MintRequest
from trustpub.providers import PROVIDERS
from trustpub.providers.issuers import IssuerRegistry
from trustpub.registry import audit, uploads
from trustpub.registry.admin import Admin
from trustpub.registry.config import Settings
from trustpub.registry.consumer import RETRY_DELAY_S, EventConsumer
from trustpub.registry.exchange import Matcher, purge_used_tokens
from trustpub.registry.explain import Explainer
from trustpub.registry.metrics import RegistryMetrics
from trustpub.registry.mints import Mints
from trustpub.registry.pending import purge_expired_pending
from trustpub.registry.pool import Database
from trustpub.runtime import Forward, Runtime
from trustpub.runtime.seal import SealError
from trustpub.runtime.streamwatch import watch_event_stream

log = structlog.get_logger("trustpub.registry")

MAX_DESCRIPTION = 1000
# Non-UUID event ids are mapped to a UUID deterministically, so redelivery stays idempotent.
_EVENT_NAMESPACE = uuid.UUID("5f0c7a52-6f1e-4d57-9a51-0d4f1bb1f0a4")

# A batch of answered exchanges: their audit rows (once each, by event id) and what they mean
# for the mint records (DESIGN.md, "Exactly once, as the publisher sees it"): a delivered one
# is single use from now on; a refused one releases the record granted to it, undelivered.
_STORE_EVENTS = f"""
WITH e AS (
    SELECT *
    FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::uuid[], $6::uuid[],
                $7::text[], $8::text[], $9::text[]) AS t(e, a, k, x, p, m, o, c, d)
), delivered AS (
    UPDATE mints SET delivered_at = e.a
    FROM e
    WHERE e.k = 'exchange.succeeded' AND mints.id = e.m AND mints.delivered_at IS NULL
    RETURNING 1
), released AS (
    UPDATE mints SET released_at = now()
    WHERE attempt_exchange_id = ANY(SELECT x FROM e WHERE k = 'exchange.failed' AND x <> '')
      AND delivered_at IS NULL AND released_at IS NULL
    RETURNING 1
), audit AS (
    {audit.insert_rows(", ".join(audit.AUDIT_COLUMNS), "SELECT e, a, k, x, p, m, o, c, d::jsonb FROM e")}
    RETURNING 1
)
SELECT (SELECT count(*) FROM audit) AS audited, (SELECT count(*) FROM delivered) AS delivered,
       (SELECT count(*) FROM released) AS released
"""  # noqa: S608  (constant SQL)
# How far a delivered exchange's own time may precede the stream's: the gateway batches
# deliveries for gateway/events.py's BATCH_WAIT_S; older claims are clamped to this.
MAX_BATCH_AGE_S = 5.0


async def setup(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
    """Open the database pool, serve the endpoints, start the background work."""
    settings = cast("Settings", rt.settings)
    metrics = RegistryMetrics(rt.registry)
    db = Database(settings.database_url, pool_size=settings.pool_size, timeout=settings.database_timeout)
    await db.start()
    stack.push_async_callback(db.close)
    rt.checks["database"] = db.ping

    matcher = Matcher(db, settings, metrics)
    explainer = Explainer(db, settings, metrics)
    mints = Mints(db, metrics)

    async def match(req: MatchRequest) -> Forward[MintRequest]:
        # Committed: the minter signs this grant, and answers the gateway.
        return Forward(MintRequest(grant=await matcher.match(req)))

    # In-flight requests capped at the pool size: a request never queues on the pool
    # behind a newcomer (DESIGN.md, "Performance": a long p99 tail otherwise).
    rt.serve(PUBLISHER_MATCH, match, concurrency=settings.pool_size)
    rt.serve(MINT_REVOKE, mints.revoke, concurrency=settings.pool_size)
    rt.serve(MINT_STATUS, mints.status, concurrency=settings.pool_size)
    rt.serve(PUBLISHER_EXPLAIN, explainer.explain, concurrency=settings.pool_size)
    uploads.serve(rt, db, metrics, settings.pool_size)  # the upload gate's record and provenance
    rt.serve(ADMIN_CALL, Admin(db, settings).handle, concurrency=max(1, settings.pool_size // 4))

    rt.background(
        purge_loop(db, settings.purge_interval, metrics), "purge used tokens, expired pending publishers"
    )
    issuers = IssuerRegistry.load(settings.issuers_file)
    rt.background(AuditConsumer(rt, db, metrics, issuers, EXCHANGE_FAILED).run(), "audit consumer")
    # The registry consumes the events stream: it keeps the stream's bounds and reports its fill.
    watch_event_stream(rt)
    rt.background(AuditConsumer(rt, db, metrics, issuers, EXCHANGE_SUCCEEDED).run(), "delivery consumer")


async def purge_loop(db: Database, interval: float, metrics: RegistryMetrics | None = None) -> None:
    """Every ``interval`` seconds, delete used token ids whose retention has passed, and
    pending publishers past their expiry (each audited as ``pending.expired``)."""
    while True:
        await asyncio.sleep(interval)
        try:
            async with db.connection() as conn:
                removed = await purge_used_tokens(conn)
                expired = await purge_expired_pending(conn)
        except Unavailable:
            log.warning("used_tokens_purge_skipped", reason="database unavailable")
        except Exception:  # a background loop must survive a bad round
            log.exception("used_tokens_purge_failed")
        else:
            log.info("used_tokens_purged", rows=removed)
            if expired:
                if metrics is not None:
                    metrics.audited("pending.expired", len(expired))
                for p in expired:
                    log.info(
                        "pending_publisher_expired",
                        publisher_id=p.id,
                        provider=p.provider,
                        project=p.project_name,
                    )


def _event_uuid(event: ExchangeEvent, raw: bytes) -> uuid.UUID:
    try:
        return uuid.UUID(event.event_id)
    except ValueError:
        return uuid.uuid5(_EVENT_NAMESPACE, event.event_id or raw.decode("utf-8", "replace"))


def _maybe_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


# What a refused exchange's record may say: the error codes (PyPI's and ours, plus the
# gateway's 429, gateway/limits.py), the providers trustpub knows. Anything else did not come
# from a gateway.
AUDIT_CODES = frozenset(c.value for c in ErrorCode) | {"rate-limited"}
AUDIT_PROVIDERS = frozenset(PROVIDERS) | {"unknown"}


class AuditConsumer(EventConsumer):
    """Stores the gateway's exchange events in ``audit_events``, each once, and applies them
    to the mint records: ``exchange.failed`` (one event per message) or ``exchange.succeeded``
    (batches), one consumer per event.

    A durable pull consumer on the events stream; a batch is acknowledged only after its
    insert committed, so a database outage means redelivery, not loss, and the event id
    (``ON CONFLICT DO NOTHING``) makes redelivery harmless. An event is stored only if it
    carries the gateway's seal and says only what a gateway says (a known code and provider,
    a configured issuer); its time is the stream's (a delivered exchange's own time, when a
    little earlier: it waited in a batch), not what the message claims. Anything else is
    terminated, counted and logged, never stored.
    """

    def __init__(
        self,
        rt: Runtime,
        db: Database,
        metrics: RegistryMetrics,
        issuers: IssuerRegistry,
        event: Event[ExchangeEvent] | Event[ExchangeEvents] = EXCHANGE_FAILED,
    ) -> None:
        super().__init__(rt, event)
        self.db = db
        self.metrics = metrics
        self.issuers = issuers
        self.kind = f"exchange.{event.fact}"
        self._decoder: msgspec.json.Decoder[ExchangeEvent | ExchangeEvents] = msgspec.json.Decoder(event.type)
        self._backlog_at = 0.0

    async def observe(self, sub: Any, fetched: int) -> None:  # noqa: ANN401
        if not fetched or time.monotonic() - self._backlog_at >= 1.0:
            info = await sub.consumer_info()
            self.metrics.audit_backlog.labels(self.kind).set(
                (info.num_pending or 0) + (info.num_ack_pending or 0)
            )
            self._backlog_at = time.monotonic()

    async def store(self, msgs: Sequence[Msg]) -> int:
        """Insert a batch of events and apply them to the mint records; ack them after the
        commit. Returns the audit rows inserted.

        Raises:
            Unavailable: the database is down; the events were negatively acknowledged
                (redelivered after a short delay).
        """
        good: list[Msg] = []
        cols: list[list[Any]] = [[] for _ in range(9)]
        for msg in msgs:
            try:
                events = self._accept(msg)
            except _Refused as exc:
                # A message that can never be stored must not block the ones behind it.
                self.rt.metrics.bus_refused.labels(f"events.{self.kind}", exc.reason).inc()
                log.warning("audit_event_refused", reason=exc.reason, detail=str(exc)[:200])
                await msg.term()
                continue
            good.append(msg)
            stored_at = msg.metadata.timestamp  # when the stream stored it
            for event in events:
                for col, value in zip(cols, self._row(event, msg.data, stored_at), strict=True):
                    col.append(value)
        if not good:
            return 0
        try:
            async with self.db.connection() as conn:
                row = await conn.fetchrow(_STORE_EVENTS, *cols)
        except Unavailable:
            for msg in good:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=RETRY_DELAY_S)
            raise
        self.metrics.audited(self.kind, row["audited"])
        self.metrics.delivery_marks.labels("delivered").inc(row["delivered"])
        self.metrics.delivery_marks.labels("released").inc(row["released"])
        for msg in good:
            await msg.ack()
        return int(row["audited"])

    def _row(self, event: ExchangeEvent, raw: bytes, stored_at: datetime) -> tuple[Any, ...]:
        detail = {
            "description": event.description[:MAX_DESCRIPTION],
            "issuer": event.issuer,
            "provider": event.provider,
            "token_hash_prefix": event.token_hash_prefix[:16],
        }
        if self.kind == "exchange.succeeded":
            del detail["description"]
        for key, value in (("publisher_id", event.publisher_id), ("mint_id", event.mint_id)):
            if value and _maybe_uuid(value) is None:
                detail[key] = value[:100]
        at = stored_at
        if self.kind == "exchange.succeeded":
            # Batched: the event's own time, if it is a plausible one.
            claimed = stored_at.timestamp() - event.at
            if 0 <= claimed <= MAX_BATCH_AGE_S:
                at = datetime.fromtimestamp(event.at, UTC)
        return (
            _event_uuid(event, raw),
            at,
            self.kind,
            event.exchange_id,
            _maybe_uuid(event.publisher_id),
            _maybe_uuid(event.mint_id),
            self.event.fact if self.kind == "exchange.succeeded" else (event.outcome or "failed"),
            event.code,
            msgspec.json.encode(detail).decode(),
        )

    def _accept(self, msg: Msg) -> list[ExchangeEvent]:
        """The events of a message a gateway published.

        Raises:
            _Refused: not sealed by a gateway, malformed, or saying what no gateway says.
        """
        try:
            self.rt.check_event(self.event, msg)
        except SealError as exc:
            raise _Refused(exc.reason, str(exc)) from None
        try:
            decoded = self._decoder.decode(msg.data)
        except msgspec.MsgspecError as exc:
            raise _Refused("malformed", str(exc)) from None
        events = decoded.events if isinstance(decoded, ExchangeEvents) else [decoded]
        for event in events:
            self._check(event)
        return events

    def _check(self, event: ExchangeEvent) -> None:
        if self.kind == "exchange.succeeded":
            if event.outcome != "succeeded" or event.code or _maybe_uuid(event.mint_id) is None:
                raise _Refused("malformed", "a delivered exchange names its mint record and no error")
        elif event.code not in AUDIT_CODES:
            raise _Refused("unknown-code", f"code {event.code[:40]!r} is not one trustpub answers")
        if event.provider not in AUDIT_PROVIDERS:
            raise _Refused("unknown-provider", f"provider {event.provider[:40]!r} is not one trustpub knows")
        if event.issuer and self.issuers.get(event.issuer) is None:
            raise _Refused("unknown-issuer", f"issuer {event.issuer[:80]!r} is not configured")


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
