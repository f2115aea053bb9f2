"""Exactly once, as the publisher sees it (DESIGN.md): a mint record that was committed but
not delivered is granted again to the same token, never minted twice; a delivered one stays
single use; no grant is committed once its exchange's deadline has passed.

The registry runs in-process over real NATS and PostgreSQL; the gateway's reports (delivered,
released) are its real sealed events, consumed by the registry's real consumers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import pytest
from tests.support.bus import ADMIN, hand_over
from tests.support.registry import (
    claims_for,
    match,
    match_request,
    peers,
    register,
    registry_running,
    sample,
    unique,
    wait_until,
)

from trustpub.messages import ReusedToken, Unavailable
from trustpub.messages.endpoints import EXCHANGE_FAILED, EXCHANGE_SUCCEEDED, PUBLISHER_MATCH
from trustpub.messages.v1 import ExchangeEvent, ExchangeEvents, MatchRequest, MintGrant, encode
from trustpub.registry import exchange
from trustpub.registry.exchange import RELEASE_GRACE_S, REPORT_QUIET_S
from trustpub.registry.pool import connect
from trustpub.runtime import Runtime

GITHUB = "https://token.actions.githubusercontent.com"


def again(req: MatchRequest) -> MatchRequest:
    """The same token presented again, by a new exchange (the client's retry, or a replay)."""
    return MatchRequest(exchange_id=uuid.uuid4().hex, token=req.token)


async def mint_row(conn: asyncpg.Connection, mint_id: str) -> asyncpg.Record:
    return await conn.fetchrow("SELECT * FROM mints WHERE id = $1", uuid.UUID(mint_id))


async def mints_of(conn: asyncpg.Connection, req: MatchRequest) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM mints WHERE issuer = $1 AND token_key = $2", GITHUB, req.token.token_key
        )
    )


async def report(rt: Runtime, *, delivered: MintGrant | None = None, failed: str = "") -> None:
    """What the gateway reports of an answered exchange: delivered (in a batch) or failed."""
    gateway = peers(rt).gateway
    if delivered is not None:
        event = ExchangeEvent(
            event_id=str(uuid.uuid4()),
            exchange_id=uuid.uuid4().hex,
            at=time.time(),
            outcome="succeeded",
            issuer=GITHUB,
            provider="github",
            publisher_id=delivered.publisher_id,
            mint_id=delivered.mint_id,
        )
        await gateway.publish_event(EXCHANGE_SUCCEEDED, ExchangeEvents(events=[event]), uuid.uuid4().hex)
    if failed:
        event = ExchangeEvent(
            event_id=str(uuid.uuid4()),
            exchange_id=failed,
            at=time.time(),
            outcome="failed",
            code="unavailable",
            description="token.mint did not answer within 5.0 s",
            issuer=GITHUB,
            provider="github",
        )
        await gateway.publish_event(EXCHANGE_FAILED, event, event.event_id)


async def until_column(conn: asyncpg.Connection, mint_id: str, column: str) -> None:
    async def set_() -> bool:
        return (await mint_row(conn, mint_id))[column] is not None

    await wait_until(set_, timeout=30)


@pytest.mark.usefixtures("events_stream")
async def test_a_released_grant_is_granted_again_never_minted_twice(registry, conn):
    owner = unique("org")
    await register(conn, projects=[unique("pkg")], owner=owner)
    first = match_request(claims_for(owner))
    grant = await match(registry, first)
    # The gateway answered 503 (the minter stalled past the deadline): it releases the grant.
    await report(registry, failed=first.exchange_id)
    await until_column(conn, grant.mint_id, "released_at")

    retry = again(first)
    regrant = await match(registry, retry)

    assert regrant == grant  # the same record: id, projects, publisher, issue and expiry time
    row = await mint_row(conn, grant.mint_id)
    assert (row["attempts"], row["attempt_exchange_id"], row["released_at"]) == (2, retry.exchange_id, None)
    assert await mints_of(conn, first) == 1
    audit = await conn.fetch(
        "SELECT kind, exchange_id, detail FROM audit_events WHERE mint_id = $1 ORDER BY id",
        uuid.UUID(grant.mint_id),
    )
    assert [(r["kind"], r["exchange_id"]) for r in audit] == [
        ("mint.granted", first.exchange_id),
        ("mint.regranted", retry.exchange_id),
    ]
    assert audit[1]["detail"]["attempt"] == 2
    assert audit[1]["detail"]["first_exchange_id"] == first.exchange_id
    assert sample(registry, "trustpub_mints_regranted_total", provider="github") == 1

    # Delivered this time: single use from now on, whoever presents the token.
    await report(registry, delivered=regrant)
    await until_column(conn, grant.mint_id, "delivered_at")
    with pytest.raises(ReusedToken, match=r"^invalid token: already used$"):
        await match(registry, again(first))
    assert await mints_of(conn, first) == 1


@pytest.mark.usefixtures("events_stream")
async def test_a_delivered_grant_stays_single_use_even_after_its_lease(registry, conn):
    owner = unique("org")
    await register(conn, projects=[unique("pkg")], owner=owner)
    first = match_request(claims_for(owner))
    grant = await match(registry, first)
    await report(registry, delivered=grant)
    await until_column(conn, grant.mint_id, "delivered_at")
    # Long past the lease and its grace: a captured token still gets nothing.
    await conn.execute(
        "UPDATE mints SET lease_until = now() - interval '1 hour' WHERE id = $1", uuid.UUID(grant.mint_id)
    )
    with pytest.raises(ReusedToken):
        await match(registry, again(first))
    # A late "failed" report for the exchange that delivered changes nothing.
    await report(registry, failed=first.exchange_id)
    with pytest.raises(ReusedToken):
        await match(registry, again(first))


@pytest.mark.usefixtures("events_stream")
async def test_a_presentation_right_after_the_grant_is_a_reuse(registry, conn, monkeypatch):
    # The first exchange may still deliver (or did, and its report is on its way): PyPI's
    # answer to a token presented twice. So are concurrent presentations.
    owner = unique("org")
    await register(conn, projects=[unique("pkg")], owner=owner)
    first = match_request(claims_for(owner))
    grant = await match(registry, first)
    # "Right after", however slow this machine: the quiet time and the lease outlast the test.
    monkeypatch.setattr(exchange, "REPORT_QUIET_S", 3600.0)
    await conn.execute(
        "UPDATE mints SET issued_at = now(), lease_until = now() + interval '1 hour' WHERE id = $1",
        uuid.UUID(grant.mint_id),
    )
    outcomes = await asyncio.gather(
        *(match(registry, again(first)) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, ReusedToken) for o in outcomes), outcomes
    assert await mints_of(conn, first) == 1


@pytest.mark.usefixtures("events_stream")
async def test_a_holder_silent_past_the_quiet_time_means_come_back(registry, conn):
    # Granted seconds ago, its lease still running, no report: the exchange holding it is slow
    # or its gateway died (a client whose connection was reset retries now). Not a reuse: come
    # back once the holder can no longer deliver; then the same record.
    owner = unique("org")
    await register(conn, projects=[unique("pkg")], owner=owner)
    first = match_request(claims_for(owner))
    grant = await match(registry, first)
    mint_id = uuid.UUID(grant.mint_id)
    await conn.execute(
        "UPDATE mints SET issued_at = now() - make_interval(secs => $2), "
        "lease_until = now() + interval '3 seconds' WHERE id = $1",
        mint_id,
        REPORT_QUIET_S + 1,
    )
    with pytest.raises(Unavailable, match="present the same token again in") as caught:
        await match(registry, again(first))
    wait = int(caught.value.context["retry_after"])
    assert RELEASE_GRACE_S + 2 <= wait <= RELEASE_GRACE_S + 4
    await conn.execute(
        "UPDATE mints SET lease_until = now() - make_interval(secs => $2) WHERE id = $1",
        mint_id,
        RELEASE_GRACE_S + 1,
    )
    regrant = await match(registry, again(first))
    assert (regrant.mint_id, regrant.projects, regrant.expires_at) == (
        grant.mint_id,
        grant.projects,
        grant.expires_at,
    )
    assert await mints_of(conn, first) == 1


@pytest.mark.usefixtures("events_stream")
async def test_the_same_exchange_asking_again_gets_the_same_grant(registry, conn):
    # The gateway asks again within its deadline when a stage was not there (no responders):
    # same exchange id, so the registry's part is not done twice.
    owner = unique("org")
    await register(conn, projects=[unique("pkg")], owner=owner)
    first = match_request(claims_for(owner))
    grant = await match(registry, first)
    assert await match(registry, first) == grant
    row = await mint_row(conn, grant.mint_id)
    assert (row["attempts"], row["attempt_exchange_id"]) == (1, first.exchange_id)
    assert await mints_of(conn, first) == 1
    kinds = await conn.fetch("SELECT kind FROM audit_events WHERE mint_id = $1", uuid.UUID(grant.mint_id))
    assert [r["kind"] for r in kinds] == ["mint.granted"]


@pytest.mark.usefixtures("events_stream")
async def test_no_word_from_the_gateway_means_wait_then_grant_again(registry, conn):
    owner = unique("org")
    await register(conn, projects=[unique("pkg")], owner=owner)
    first = match_request(claims_for(owner))
    grant = await match(registry, first)
    mint_id = uuid.UUID(grant.mint_id)
    # The lease ended a moment ago and the gateway has said nothing yet (it died, or its
    # report is on its way): come back once the grace has passed.
    await conn.execute("UPDATE mints SET lease_until = now() - interval '1 second' WHERE id = $1", mint_id)
    with pytest.raises(Unavailable, match="present the same token again in") as caught:
        await match(registry, again(first))
    wait = int(caught.value.context["retry_after"])
    assert RELEASE_GRACE_S - 2 <= wait <= RELEASE_GRACE_S + 1
    # The grace has passed with no report: the gateway did not deliver, or cannot say so.
    await conn.execute(
        "UPDATE mints SET lease_until = now() - make_interval(secs => $2) WHERE id = $1",
        mint_id,
        RELEASE_GRACE_S + 1,
    )
    assert await match(registry, again(first)) == grant


@pytest.mark.usefixtures("events_stream")
async def test_a_revoked_or_foreign_record_is_not_granted_again(registry, conn):
    owner = unique("org")
    await register(conn, projects=[unique("pkg")], owner=owner)
    first = match_request(claims_for(owner))
    grant = await match(registry, first)
    await conn.execute(
        "UPDATE mints SET released_at = now(), revoked_at = now() WHERE id = $1", uuid.UUID(grant.mint_id)
    )
    with pytest.raises(ReusedToken):
        await match(registry, again(first))


async def test_no_grant_is_committed_once_the_deadline_has_passed(common, database_url, conn):
    # A lock held on the used-token table past the exchange's deadline: the registry's claim
    # waits for it, then writes nothing. The token was not spent: it goes through afterwards.
    owner = unique("org")
    await register(conn, projects=[unique("pkg")], owner=owner)
    req = match_request(claims_for(owner))
    async with registry_running(common, database_url) as rt:
        p = peers(rt)
        await match(rt, match_request(claims_for(owner)))  # the candidates are cached: one statement
        locker = await connect(database_url)
        try:
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE used_tokens IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await hand_over(
                    p.verifier,
                    PUBLISHER_MATCH,
                    req,
                    answer_to=p.gateway,
                    exchange_id=req.exchange_id,
                    timeout=1.5,
                )
            # Past the deadline now: let the claim run, if it still waits.
            assert time.monotonic() - started >= 1.4
            await tx.rollback()
        finally:
            await locker.close()

        async def idle() -> bool:
            return not await _waiting_for_lock(conn)

        await wait_until(idle, timeout=30)
        assert await mints_of(conn, req) == 0
        assert not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM used_tokens WHERE issuer = $1 AND token_key = $2)",
            GITHUB,
            req.token.token_key,
        )
        grant = await match(rt, again(req))
        assert grant.projects


async def _waiting_for_lock(conn: asyncpg.Connection) -> Any:
    return await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'trustpub-registry' "
        "AND wait_event_type = 'Lock'"
    )


@pytest.mark.usefixtures("events_stream")
async def test_a_forged_delivery_report_marks_nothing(registry, conn, bus):
    # Only the gateway's sealed report marks a record delivered: one without its seal (here
    # from the suite's admin identity, which NATS lets publish anywhere) is refused and counted.
    owner = unique("org")
    await register(conn, projects=[unique("pkg")], owner=owner)
    first = match_request(claims_for(owner))
    grant = await match(registry, first)
    event = ExchangeEvent(
        event_id=str(uuid.uuid4()),
        exchange_id=uuid.uuid4().hex,
        at=time.time(),
        outcome="succeeded",
        issuer=GITHUB,
        provider="github",
        mint_id=grant.mint_id,
    )
    subject = EXCHANGE_SUCCEEDED.subject(registry.subjects.root)
    async with bus.connection(ADMIN, registry.subjects.root) as nc:
        await nc.jetstream().publish(subject, encode(ExchangeEvents(events=[event])))

    async def refused() -> bool:
        return (
            sample(
                registry,
                "trustpub_bus_refused_total",
                endpoint="events.exchange.succeeded",
                reason="unsealed",
            )
            == 1
        )

    await wait_until(refused, timeout=30)
    assert (await mint_row(conn, grant.mint_id))["delivered_at"] is None
