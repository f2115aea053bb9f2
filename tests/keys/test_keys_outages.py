"""An identity provider that is down or slow (DESIGN.md, "Keys of identity providers"), end to end:
the real jwks service and the real verifier, asked over NATS as the gateway asks."""

from __future__ import annotations

import asyncio
import time

import pytest
from deploy.devstack.issuer import SigningKey
from tests.support.keys import COOLDOWN, World, readyz, refreshes, sample, until
from tests.support.waiting import bounded

OUTAGE = "and the last refresh of its keys failed"


async def test_f6_issuer_down_with_a_warm_cache(world: World):
    dev = world.dev
    async with world.both() as (jwks, verifier), world.nats() as nc:
        assert (await world.verify(verifier, world.token())).verified
        good = await world.stored(nc, dev.issuer)
        dev.mode = "error"  # every request answers HTTP 500
        world.advance(COOLDOWN + 1)
        hits = dev.hits["discovery"]

        forged = [world.forged() for _ in range(20)]
        known = [world.token() for _ in range(20)]
        verdicts = await bounded(asyncio.gather(*(world.verify(verifier, t) for t in forged + known)))
        # Known kids keep verifying; an unknown kid cannot be looked up: 503, not 422.
        assert all(v.verified for v in verdicts[20:])
        assert {v.code for v in verdicts[:20]} == {"unavailable"}
        assert verdicts[0].description.endswith(OUTAGE)
        # One attempt for the whole burst, and the last good set is kept, with the reason.
        assert dev.hits["discovery"] == hits + 1
        assert refreshes(jwks, dev.issuer, "error") == 1
        stored = await world.stored(nc, dev.issuer)
        assert stored is not None
        assert good is not None
        assert (stored.keys, stored.fetched_at) == (good.keys, good.fetched_at)
        assert stored.checked_at == world.jwks_clock()
        assert stored.last_error.endswith("answered HTTP 500")

        # Within the cooldown: no attempt at all, still 503 for unknown kids.
        world.advance(COOLDOWN / 2)
        assert (await world.verify(verifier, world.forged())).code == "unavailable"
        assert dev.hits["discovery"] == hits + 1
        # The age of the set rises while the issuer is down (an alert fires on it).
        age = sample(jwks, "trustpub_jwks_keyset_age_seconds", issuer=dev.issuer)
        assert age == pytest.approx(1.5 * COOLDOWN + 1)
        # The next cooldown allows one more attempt.
        world.advance(COOLDOWN / 2 + 1)
        assert (await world.verify(verifier, world.forged())).code == "unavailable"
        assert dev.hits["discovery"] == hits + 2

        # Connection refused rather than HTTP 500: the same.
        await world.servers[dev.issuer].stop()
        world.advance(COOLDOWN + 1)
        assert (await world.verify(verifier, world.forged())).code == "unavailable"
        assert (await world.verify(verifier, world.token())).verified
        assert refreshes(jwks, dev.issuer, "error") == 3
        # The other issuer was never affected.
        assert (await world.verify(verifier, world.token(world.other))).verified

        # Back up, with a new key: the first token naming it refreshes and verifies.
        dev.mode = "ok"
        dev.keys.append(SigningKey.generate("dev-2"))
        await world.servers[dev.issuer].start()
        world.advance(COOLDOWN + 1)
        assert (await world.verify(verifier, world.token(key=dev.keys[1]))).verified
        assert (await world.stored(nc, dev.issuer)).last_error == ""
        # Now that the issuer answers, an unknown kid is the token's fault.
        verdict = await world.verify(verifier, world.forged())
        assert verdict.code == "invalid-token"
        assert "is not among the published keys" in verdict.description


# F7's fetch budget: long enough that the known kids below are all answered while the fetch
# hangs, however loaded the machine (each takes milliseconds); the verifier's refresh deadline
# is above it, so the token that waits for the fetch gets the fetch's verdict.
HANG_S = 3.0


async def test_f7_slow_issuer_is_cut_and_known_kids_are_not_delayed(world: World):
    dev = world.dev
    env = world.env(fetch_timeout=f"{HANG_S:g}", refresh_timeout=f"{3 * HANG_S:g}")
    async with world.both(env) as (jwks, verifier):
        world.advance(COOLDOWN + 1)
        dev.mode = "hang"  # accepts the request and never answers
        hits = dev.hits["discovery"]
        started = time.monotonic()
        slow = asyncio.ensure_future(world.verify(verifier, world.forged()))
        await until(lambda: dev.hits["discovery"] == hits + 1)  # the refresh is hanging now

        # While it hangs, known kids (and the other issuer) answer: none waits for the fetch,
        # which is still hanging after all of them.
        for token in [world.token() for _ in range(20)] + [world.token(world.other)]:
            assert (await world.verify(verifier, token)).verified
        assert not slow.done()
        assert refreshes(jwks, dev.issuer, "error") == 0

        # The fetch is cut at fetch_timeout; the token that waited for it gets 503.
        verdict = await bounded(slow)
        elapsed = time.monotonic() - started
        assert verdict.code == "unavailable"
        assert verdict.description.endswith(OUTAGE)
        assert elapsed >= 0.9 * HANG_S  # no upper bound: a loaded machine stretches any duration
        assert refreshes(jwks, dev.issuer, "error") == 1
        fetch_time = sample(jwks, "trustpub_jwks_fetch_duration_seconds_sum", issuer=dev.issuer)
        assert fetch_time is not None
        assert fetch_time >= HANG_S
        # Nothing is left running: no fetch task outlives its budget.
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("jwks-fetch")]


async def test_f10_cold_start_while_down_uses_the_stored_set(world: World):
    dev = world.dev
    env = world.env()
    async with world.both(env) as (_, verifier):
        assert (await world.verify(verifier, world.token())).verified
    # Everything restarts while the issuer is down (connection refused).
    await world.servers[dev.issuer].stop()
    world.advance(COOLDOWN + 1)
    async with world.jwks(env) as jwks:
        await until(lambda: refreshes(jwks, dev.issuer, "error") == 1)
        async with world.verifier(env) as verifier:
            assert (await world.verify(verifier, world.token())).verified
            assert (await world.verify(verifier, world.token(world.other))).verified
            verdict = await world.verify(verifier, world.forged())
            assert (verdict.code, verdict.description.endswith(OUTAGE)) == ("unavailable", True)
            # The stored set is within the staleness bound: the jwks service is ready.
            status, body = await readyz(jwks)
            assert status == 200
            assert body["checks"][f"keys {dev.issuer}"] is True


async def test_f10_cold_start_while_down_without_a_stored_set(world: World):
    dev, other = world.dev, world.other
    await world.servers[dev.issuer].stop()
    async with world.jwks() as jwks:
        await until(lambda: refreshes(jwks, dev.issuer, "error") == 1)
        await world.settled(jwks)
        async with world.verifier() as verifier:
            verdict = await world.verify(verifier, world.token())
            assert (verdict.code, verdict.description) == (
                "unavailable",
                f"keys of {dev.issuer} are unavailable",
            )
            # That issuer only.
            assert (await world.verify(verifier, world.token(other))).verified

            # The jwks service is not ready (an enabled issuer has no usable set); the
            # built-in issuers switched off in the issuers file do not count.
            status, body = await readyz(jwks)
            assert status == 503
            assert body["checks"] == {
                "nats": True,
                "jwks_bucket": True,
                f"keys {dev.issuer}": False,
                f"keys {other.issuer}": True,
            }
            # The verifier stays ready and says which issuer it has keys for.
            status, body = await readyz(verifier)
            assert status == 200
            assert body["checks"] == {"nats": True, "keys": True}
            assert body["advisories"] == {f"keys {dev.issuer}": False, f"keys {other.issuer}": True}

            # The issuer comes back: after the cooldown, its next token fetches and verifies.
            await world.servers[dev.issuer].start()
            world.advance(COOLDOWN + 1)
            assert (await world.verify(verifier, world.token())).verified
            assert (await readyz(jwks))[0] == 200
            assert (await readyz(verifier))[1]["advisories"][f"keys {dev.issuer}"] is True
