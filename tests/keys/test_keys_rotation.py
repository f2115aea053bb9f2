"""Key rotation at the identity provider (DESIGN.md, "Keys of identity providers"), end to end, and the
``jwks.rotated`` events that every change of a key set publishes."""

from __future__ import annotations

import time

import msgspec
from deploy.devstack.issuer import SigningKey
from structlog.testing import capture_logs
from tests.support.keys import COOLDOWN, Verdict, World, kids
from tests.support.waiting import WAIT_S, until

from trustpub.messages.v1 import KeySet, KeySetRotated, RefreshRequest
from trustpub.runtime import Runtime


async def read_events(world: World) -> list[KeySetRotated]:
    """Every jwks.rotated event on the stream, from the first one, through a JetStream consumer."""
    events = []
    async with world.nats() as nc:
        js = nc.jetstream()
        sub = await js.subscribe(
            world.subjects.event("jwks", "rotated"),
            stream=world.subjects.events_stream,
            ordered_consumer=True,
        )
        info = await js.stream_info(world.subjects.events_stream)
        for _ in range(info.state.messages):
            msg = await sub.next_msg(timeout=WAIT_S)
            events.append(msgspec.json.decode(msg.data, type=KeySetRotated))
        await sub.unsubscribe()
    return events


async def refresh(world: World, verifier: Runtime, issuer: str) -> KeySet:
    """What the periodic refresh does, asked now (the clock was moved past the cooldown)."""
    return await world.refresh(verifier, RefreshRequest(issuer=issuer))


async def test_f9_rotation_without_a_window_where_both_keys_fail(world: World):
    dev = world.dev
    key_1, key_2 = dev.keys[0], SigningKey.generate("dev-2")

    async def both_keys(verifier: Runtime) -> tuple[Verdict, Verdict]:
        return (
            await world.verify(verifier, world.token(key=key_1)),
            await world.verify(verifier, world.token(key=key_2)),
        )

    async with world.both() as (_, verifier), world.nats() as nc:
        # The issuer publishes key 2 (as OIDC Core §10.1.1 says, before signing with it).
        dev.keys.append(key_2)
        world.advance(COOLDOWN + 1)
        # The first token naming it triggers a refresh and verifies; key 1 still verifies.
        v1, v2 = await both_keys(verifier)
        assert (v1.verified, v2.verified) == (True, True)
        assert kids(await world.stored(nc, dev.issuer)) == ["dev-1", "dev-2"]

        # A refresh that finds the same keys changes nothing and publishes nothing.
        world.advance(COOLDOWN + 1)
        assert kids(await refresh(world, verifier, dev.issuer)) == ["dev-1", "dev-2"]

        # The issuer withdraws key 1. Until the next refresh both still verify...
        dev.keys.remove(key_1)
        v1, v2 = await both_keys(verifier)
        assert (v1.verified, v2.verified) == (True, True)
        # ...after it, key 1 is refused as the token's fault, and key 2 verifies.
        world.advance(COOLDOWN + 1)
        assert kids(await refresh(world, verifier, dev.issuer)) == ["dev-2"]

        async def withdrawn() -> bool:
            return (await world.verify(verifier, world.token(key=key_1))).code == "invalid-token"

        await until(withdrawn, "key 1 refused once the refresh dropped it")
        v1, v2 = await both_keys(verifier)
        assert v1.code == "invalid-token"
        assert v1.description == f'key id "dev-1" is not among the published keys of {dev.issuer}'
        assert v2.verified

    # Every change of the set, and only those, is on the events stream.
    events = await read_events(world)
    assert [(e.old_kids, e.new_kids) for e in events if e.issuer == world.other.issuer] == [([], ["gl-1"])]
    first, added, removed = [e for e in events if e.issuer == dev.issuer]
    assert (first.issuer, first.old_kids, first.new_kids) == (dev.issuer, [], ["dev-1"])
    assert (added.old_kids, added.new_kids) == (["dev-1"], ["dev-1", "dev-2"])
    assert (removed.old_kids, removed.new_kids) == (["dev-1", "dev-2"], ["dev-2"])
    assert [e.replaced_kids for e in (first, added, removed)] == [[], [], []]
    assert len({e.event_id for e in (first, added, removed)}) == 3
    assert first.at <= added.at <= removed.at


async def test_withdrawn_key_stops_verifying_within_one_refresh_period(world: World):
    # Real clocks and a real (short) period: nothing asks for a refresh but the timer.
    world.jwks_clock = world.verifier_clock = time.time  # type: ignore[assignment]
    dev = world.dev
    async with world.both(world.env(refresh_interval="0.3")) as (_, verifier):
        assert (await world.verify(verifier, world.token())).verified
        key_1, key_2 = dev.keys[0], SigningKey.generate("dev-2")
        with capture_logs() as logs:
            dev.keys[:] = [key_2]

            async def withdrawn() -> bool:
                return (await world.verify(verifier, world.token(key=key_1))).code == "invalid-token"

            await until(withdrawn, "key 1 refused after a periodic refresh")
        assert (await world.verify(verifier, world.token(key=key_2))).verified
    # "Within one period" counted in refreshes, not seconds (a loaded machine stretches
    # those): the key is gone after the first refresh that began after it was withdrawn, at
    # worst the second one (the first may have fetched just before), every one of them
    # periodic (known kids never ask for one).
    refreshed = [e for e in logs if e["event"] == "jwks_refreshed" and e["issuer"] == dev.issuer]
    assert {e["trigger"] for e in refreshed} == {"periodic"}
    first_without = next(i for i, e in enumerate(refreshed) if e["kids"] == ["dev-2"])
    assert first_without <= 1, refreshed
