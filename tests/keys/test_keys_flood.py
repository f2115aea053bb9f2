"""Tokens naming random kids cannot make trustpub hammer an identity provider, with one jwks
replica or several; replicas share the stored set and its cooldown."""

from __future__ import annotations

import asyncio
import time
import uuid

from deploy.devstack.issuer import SigningKey
from tests.support.keys import COOLDOWN, World, kids, refreshes, sample
from tests.support.waiting import bounded

from trustpub.messages.v1 import KeySet, RefreshRequest
from trustpub.runtime import Runtime


def served(rt: Runtime, endpoint: str) -> float:
    """Requests one replica answered on an endpoint (its own metric)."""
    total = 0.0
    for outcome in ("ok", "forwarded", "error", "internal"):
        labels = {"endpoint": endpoint, "outcome": outcome}
        total += rt.registry.get_sample_value("trustpub_nats_endpoint_duration_seconds_count", labels) or 0
    return total


async def test_kid_flood_costs_at_most_one_fetch_per_cooldown(world: World):
    dev, other = world.dev, world.other
    async with world.both() as (_, verifier):
        world.advance(COOLDOWN + 1)
        fetches = dev.hits["jwks"]
        other_hits = dict(other.hits)
        started_at = world.jwks_clock()

        async def flood(n: int) -> list[str]:
            verdicts = await bounded(
                asyncio.gather(*(world.verify(verifier, world.forged()) for _ in range(n)))
            )
            return [v.code for v in verdicts]

        async def other_issuer(n: int) -> None:
            for _ in range(n):
                assert (await world.verify(verifier, world.token(other))).verified

        # 200 validly signed tokens, each naming a kid the issuer never published, while the
        # other issuer's tokens keep flowing (and verifying, without a fetch of its keys).
        codes, _ = await asyncio.gather(flood(200), other_issuer(20))
        assert set(codes) == {"invalid-token"}

        # More floods: half a cooldown later (no fetch), then past it (one more fetch).
        world.advance(COOLDOWN / 2)
        assert set(await flood(50)) == {"invalid-token"}
        world.advance(COOLDOWN / 2 + 1)
        assert set(await flood(50)) == {"invalid-token"}

        elapsed = world.jwks_clock() - started_at
        assert dev.hits["jwks"] - fetches <= 1 + elapsed / COOLDOWN
        assert dev.hits["jwks"] - fetches == 2
        assert other.hits == other_hits  # the other issuer was never fetched
        assert (
            sample(verifier, "trustpub_verify_total", provider="gitlab", outcome="verified", code="none")
            == 20
        )


async def test_two_jwks_replicas_share_one_set_and_one_cooldown(world: World):
    dev = world.dev
    env = world.env()
    async with world.jwks(env) as first, world.nats() as nc:
        await world.settled(first)
        fetches = dev.hits["jwks"]
        async with world.jwks(env) as second, world.verifier(env) as verifier:
            # The second replica found the set checked within the cooldown: no fetch.
            await world.settled(second)
            assert sample(second, "trustpub_jwks_keys", issuer=dev.issuer) == 1
            assert dev.hits["jwks"] == fetches

            # The issuer publishes a new key; past the cooldown, a flood reaches both
            # replicas at once: refresh requests straight to the jwks subject, and tokens
            # through the verifier.
            key_2 = SigningKey.generate("dev-2")
            dev.keys.append(key_2)
            world.advance(COOLDOWN + 1)

            async def ask_refresh() -> KeySet:
                return await world.refresh(verifier, RefreshRequest(issuer=dev.issuer, kid=uuid.uuid4().hex))

            sets, verdicts = await bounded(
                asyncio.gather(
                    asyncio.gather(*(ask_refresh() for _ in range(100))),
                    asyncio.gather(*(world.verify(verifier, world.forged()) for _ in range(100))),
                )
            )
            # One fetch between them: the replica that did not win the claim waited for the
            # other's result instead of fetching too.
            assert dev.hits["jwks"] == fetches + 1
            assert {v.code for v in verdicts} == {"invalid-token"}
            # Whichever replica lost: it followed the other's fetch, or came after it.
            waited = [
                refreshes(rt, dev.issuer, "followed") + refreshes(rt, dev.issuer, "cooldown")
                for rt in (first, second)
            ]
            assert sum(waited) >= 1
            # Every answer, from either replica, is the new set (none the old one).
            assert {tuple(kids(s)) for s in sets} == {("dev-1", "dev-2")}
            assert served(first, "jwks.refresh") > 0
            assert served(second, "jwks.refresh") > 0

            # The stored set is the one both replicas serve and the verifier uses.
            stored = await world.stored(nc, dev.issuer)
            assert kids(stored) == ["dev-1", "dev-2"]
            assert stored is not None
            assert stored.pending_since == 0
            for replica in (first, second):
                assert sample(replica, "trustpub_jwks_keys", issuer=dev.issuer) == 2
            assert (await world.verify(verifier, world.token(key=key_2))).verified

            # Another flood within the cooldown, through both: no fetch at all.
            world.advance(COOLDOWN / 2)
            await asyncio.gather(*(ask_refresh() for _ in range(50)))
            assert dev.hits["jwks"] == fetches + 1


async def test_replicas_wait_for_each_others_slow_fetch(world: World):
    dev = world.dev
    env = world.env(fetch_timeout="0.5")
    async with world.jwks(env) as first:
        await world.settled(first)
        async with world.jwks(env) as second, world.verifier(env) as verifier:
            await world.settled(second)
            dev.mode = "hang"
            world.advance(COOLDOWN + 1)
            hits = dev.hits["discovery"]
            started = time.monotonic()
            replies = await bounded(
                asyncio.gather(
                    *(
                        world.refresh(verifier, RefreshRequest(issuer=dev.issuer, kid=f"k{i}"))
                        for i in range(20)
                    )
                )
            )
            elapsed = time.monotonic() - started
            # One replica claimed the fetch and was cut at the timeout; the other saw the
            # claim and waited for its result: one request reached the issuer.
            assert dev.hits["discovery"] == hits + 1
            assert elapsed >= 0.45  # not before the fetch timeout (no upper bound: CI is slow)
            [reason] = {r.last_error for r in replies}
            assert reason.endswith("no answer within 0.5 s")
            assert {refreshes(rt, dev.issuer, "error") for rt in (first, second)} == {0, 1}
            assert {refreshes(rt, dev.issuer, "followed") > 0 for rt in (first, second)} == {True, False}
            assert (await world.verify(verifier, world.forged())).code == "unavailable"
            assert (await world.verify(verifier, world.token())).verified
