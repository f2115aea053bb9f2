"""Pending publishers in the registry service (real NATS and PostgreSQL): creation of the
project on first use, the race of two exchanges, the project created another way first,
expiry and its purge, the per-registrant limit."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from tests.support.registry import (
    claims_for,
    match,
    match_request,
    register,
    register_pending,
    registry_running,
    sample,
    unique,
    wait_until,
)

from trustpub.messages import InvalidPendingPublisher, InvalidPublisher, ReusedToken
from trustpub.messages.v1 import MintGrant
from trustpub.providers.rules import RegistrationError
from trustpub.registry.pending import PendingPublisher
from trustpub.registry.pool import connect
from trustpub.registry.publishers import add_project, get_publisher, normalize_name


async def audit_kinds(conn, publisher_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT kind FROM audit_events WHERE publisher_id = $1 ORDER BY id", uuid.UUID(publisher_id)
    )
    return [r["kind"] for r in rows]


async def test_first_exchange_creates_the_project_and_converts(registry, conn):
    owner, name, who = unique("org"), unique("New.Pkg"), unique("alice")
    pending = await register_pending(conn, project=name, owner=owner, registrant=who, repository_id=None)
    assert await conn.fetchval("SELECT count(*) FROM projects WHERE name = $1", name) == 0

    claims = claims_for(owner)
    grant = await match(registry, match_request(claims))

    # The pending publisher became a normal one under its own id, linked to the new project.
    assert grant.publisher_id == pending.id
    assert grant.projects == [name]
    project = await conn.fetchrow("SELECT * FROM projects WHERE normalized_name = $1", normalize_name(name))
    assert (project["name"], project["created_by"]) == (name, who)
    publisher = await get_publisher(conn, pending.id)
    assert publisher.projects == [name]
    assert publisher.registrant == who
    # Its open repository id was pinned by the same exchange.
    assert publisher.spec["repository_id"] == "2002"
    assert (
        await conn.fetchval("SELECT count(*) FROM pending_publishers WHERE id = $1", uuid.UUID(pending.id))
        == 0
    )
    assert await audit_kinds(conn, pending.id) == [
        "pending.created",
        "pending.converted",
        "publisher.pinned",
        "mint.granted",
    ]
    converted = await conn.fetchrow(
        "SELECT * FROM audit_events WHERE kind = 'pending.converted' AND publisher_id = $1",
        uuid.UUID(pending.id),
    )
    assert converted["detail"]["project"] == name
    assert converted["detail"]["registrant"] == who
    assert converted["detail"]["reused_publisher"] is False
    created = await conn.fetchrow(
        "SELECT * FROM audit_events WHERE kind = 'project.created' AND detail->>'project' = $1", name
    )
    assert created["detail"]["via"] == "pending publisher"
    assert sample(registry, "trustpub_pending_publishers_converted_total", provider="github") == 1
    assert sample(registry, "trustpub_audit_events_total", kind="pending.converted") == 1

    # From now on it is a normal publisher: the next token mints without converting again.
    again = await match(registry, match_request(claims_for(owner)))
    assert (again.publisher_id, again.projects) == (pending.id, [name])
    assert sample(registry, "trustpub_pending_publishers_converted_total", provider="github") == 1


async def test_pending_reuses_an_identical_normal_publisher(registry, conn):
    # As Warehouse's reify: the identity exists as a normal publisher of another project; the
    # new project is linked to it and the token covers both.
    owner, old, new = unique("org"), unique("old"), unique("new")
    normal = await register(conn, projects=[old], owner=owner)
    pending = await register_pending(conn, project=new, owner=owner, registrant=unique("bob"))
    grant = await match(registry, match_request(claims_for(owner)))
    assert grant.publisher_id == normal.id
    assert grant.projects == sorted([old, new], key=normalize_name)
    assert (
        await conn.fetchval("SELECT count(*) FROM pending_publishers WHERE id = $1", uuid.UUID(pending.id))
        == 0
    )
    detail = await conn.fetchval(
        "SELECT detail FROM audit_events WHERE kind = 'pending.converted' AND publisher_id = $1",
        uuid.UUID(normal.id),
    )
    assert detail["reused_publisher"] is True
    assert detail["pending_id"] == pending.id


async def _waiting_on_locks(conn, n: int) -> None:
    async def enough() -> bool:
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'trustpub-registry' "
            "AND wait_event_type = 'Lock' AND datname = current_database()"
        )
        return bool(waiting >= n)

    await wait_until(enough, timeout=10, interval=0.02)


@pytest.mark.parametrize("same_token", [False, True], ids=["two-tokens", "same-token"])
async def test_race_for_one_pending_publisher_gives_one_project_and_one_mint(registry, conn, same_token):
    owner, name = unique("org"), unique("race")
    pending = await register_pending(conn, project=name, owner=owner, registrant=unique("carol"))
    first = claims_for(owner)
    second = first if same_token else claims_for(owner)
    # Hold the pending row so that both exchanges have read it before either converts it.
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM pending_publishers WHERE id = $1 FOR UPDATE", uuid.UUID(pending.id))
        racing = asyncio.gather(
            match(registry, match_request(first)),
            match(registry, match_request(second)),
            return_exceptions=True,
        )
        task = asyncio.ensure_future(racing)
        await _waiting_on_locks(conn, 2)
    results = await asyncio.wait_for(task, 15)

    grants = [r for r in results if isinstance(r, MintGrant)]
    assert len(grants) == 1, results
    (loser,) = [r for r in results if not isinstance(r, MintGrant)]
    assert await conn.fetchval("SELECT count(*) FROM projects WHERE name = $1", name) == 1
    assert (
        await conn.fetchval("SELECT count(*) FROM mints WHERE publisher_id = $1", uuid.UUID(pending.id)) == 1
    )
    if same_token:
        assert isinstance(loser, ReusedToken), loser
        assert loser.description == "invalid token: already used"
        return
    assert isinstance(loser, InvalidPendingPublisher), loser
    assert loser.description == (
        f'the pending publisher for project "{name}" was used or removed by a concurrent request just now; '
        "this token was not used: present it again"
    )
    # Retry-safe: the loser's token id was not consumed, and it now mints through the new
    # normal publisher, for the same single project.
    lost = second if results[0] is grants[0] else first
    retried = await match(registry, match_request(lost))
    assert (retried.publisher_id, retried.projects) == (pending.id, [name])
    assert await conn.fetchval("SELECT count(*) FROM projects WHERE name = $1", name) == 1


async def test_project_created_another_way_first(registry, conn):
    owner, name = unique("org"), unique("taken")
    pending = await register_pending(conn, project=name, owner=owner, registrant=unique("dave"))
    await add_project(conn, name.upper(), created_by="someone-else")
    claims = claims_for(owner)

    with pytest.raises(InvalidPendingPublisher) as info:
        await match(registry, match_request(claims))
    assert info.value.code == "invalid-pending-publisher"
    assert info.value.description.startswith("valid token, but project already exists (")
    assert (
        f'project "{name}" was created after this pending publisher was registered' in info.value.description
    )

    # The pending publisher was removed (committed although the exchange failed, as PyPI)...
    assert (
        await conn.fetchval("SELECT count(*) FROM pending_publishers WHERE id = $1", uuid.UUID(pending.id))
        == 0
    )
    assert await audit_kinds(conn, pending.id) == ["pending.created", "pending.invalidated"]
    # ... nothing was minted, the token id was not consumed, the project was not touched.
    assert await conn.fetchval("SELECT count(*) FROM used_tokens WHERE token_key = $1", claims["jti"]) == 0
    assert (
        await conn.fetchval("SELECT count(*) FROM mints WHERE publisher_id = $1", uuid.UUID(pending.id)) == 0
    )
    assert (
        await conn.fetchval("SELECT created_by FROM projects WHERE name = $1", name.upper()) == "someone-else"
    )
    # The same token again finds no publisher at all.
    with pytest.raises(InvalidPublisher, match="no trusted publisher is registered"):
        await match(registry, match_request(claims))


async def test_replayed_token_converts_nothing(registry, conn):
    owner, name = unique("org"), unique("replay")
    pending = await register_pending(conn, project=name, owner=owner, registrant=unique("erin"))
    claims = claims_for(owner)
    await conn.execute(
        "INSERT INTO used_tokens (issuer, token_key, expires_at) VALUES ($1, $2, now() + interval '1 hour')",
        "https://token.actions.githubusercontent.com",
        claims["jti"],
    )
    with pytest.raises(ReusedToken):
        await match(registry, match_request(claims))
    # Rolled back as one transaction: no project, the pending publisher is still there.
    assert await conn.fetchval("SELECT count(*) FROM projects WHERE name = $1", name) == 0
    assert (
        await conn.fetchval("SELECT count(*) FROM pending_publishers WHERE id = $1", uuid.UUID(pending.id))
        == 1
    )


async def test_expired_pending_is_never_matched_and_is_purged(common, database_url, conn):
    owner, name, who = unique("org"), unique("late"), unique("frank")
    pending = await register_pending(conn, project=name, owner=owner, registrant=who)
    assert 29 * 86400 < (pending.expires_at - pending.created_at).total_seconds() <= 30 * 86400
    await conn.execute(
        "UPDATE pending_publishers SET created_at = now() - interval '31 days', "
        "expires_at = now() - interval '1 day' WHERE id = $1",
        uuid.UUID(pending.id),
    )
    async with registry_running(common, database_url) as rt:
        with pytest.raises(InvalidPublisher) as info:
            await match(rt, match_request(claims_for(owner)))
    assert f'the pending publisher for project "{name}" expired at ' in info.value.description
    assert "register it again" in info.value.description
    assert await conn.fetchval("SELECT count(*) FROM projects WHERE name = $1", name) == 0

    async with registry_running(common, database_url, TRUSTPUB_PURGE_INTERVAL="0.1") as rt:

        async def purged() -> bool:
            return not await conn.fetchval(
                "SELECT count(*) FROM pending_publishers WHERE id = $1", uuid.UUID(pending.id)
            )

        await wait_until(purged, timeout=10)
        await wait_until(
            lambda: _async_true(sample(rt, "trustpub_audit_events_total", kind="pending.expired") >= 1)
        )
    row = await conn.fetchrow(
        "SELECT * FROM audit_events WHERE kind = 'pending.expired' AND publisher_id = $1",
        uuid.UUID(pending.id),
    )
    assert row["detail"]["by"] == "system:ttl-expired"
    assert row["detail"]["project"] == name
    assert row["detail"]["registrant"] == who


async def _async_true(value: bool) -> bool:  # noqa: FBT001
    return value


async def test_per_registrant_limit_and_registration_checks(conn):
    who = unique("grace")
    made = [
        await register_pending(
            conn, project=unique("lim"), owner=unique("org"), registrant=who, max_per_registrant=2
        )
        for _ in range(2)
    ]
    with pytest.raises(RegistrationError) as info:
        await register_pending(
            conn, project=unique("lim"), owner=unique("org"), registrant=who, max_per_registrant=2
        )
    assert f'registrant "{who}" holds 2 pending publishers already, the limit' in str(info.value)
    # Another registrant is not affected; an expired one no longer counts.
    await register_pending(conn, project=unique("lim"), owner=unique("org"), registrant=unique("heidi"))
    await conn.execute(
        "UPDATE pending_publishers SET created_at = now() - interval '31 days', "
        "expires_at = now() - interval '1 second' WHERE id = $1",
        uuid.UUID(made[0].id),
    )
    await register_pending(
        conn, project=unique("lim"), owner=unique("org"), registrant=who, max_per_registrant=2
    )

    existing = unique("exists")
    await add_project(conn, existing)
    with pytest.raises(RegistrationError, match="exists already; register a normal publisher"):
        await register_pending(conn, project=existing, owner=unique("org"), registrant=unique("ivan"))
    owner = unique("org")
    first = await register_pending(conn, project=unique("dup"), owner=owner, registrant=unique("judy"))
    with pytest.raises(RegistrationError, match=f'pending already for project "{first.project_name}"'):
        await register_pending(conn, project=unique("dup"), owner=owner, registrant=unique("judy"))
    with pytest.raises(RegistrationError, match="needs its registrant"):
        await register_pending(conn, project=unique("x"), owner=unique("org"), registrant=" ")
    with pytest.raises(RegistrationError, match="is not valid"):
        await register_pending(conn, project="bad name!", owner=unique("org"), registrant=unique("k"))


async def test_concurrent_registrations_respect_the_limit(database_url):
    who = unique("mallory")
    conns = [await asyncio.wait_for(connect(database_url), 10) for _ in range(4)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    register_pending(c, project=unique("conc"), owner=unique("org"), registrant=who)
                    for c in conns
                ),
                return_exceptions=True,
            ),
            20,
        )
    finally:
        for c in conns:
            await c.close()
    assert sum(isinstance(r, PendingPublisher) for r in results) == 3
    assert sum(isinstance(r, RegistrationError) for r in results) == 1
