"""The staleness bound: an issuer whose keys have not been fetched for longer than
``key_staleness`` gets 503 for its tokens instead of stale trust (time is moved, not waited)."""

from __future__ import annotations

from tests.support.keys import COOLDOWN, World, readyz, refreshes, sample

BOUND = 86400.0  # the default, in both services


async def test_stale_keys_are_refused_until_a_fetch_succeeds(world: World):
    dev, other = world.dev, world.other
    async with world.both() as (jwks, verifier), world.nats() as nc:
        assert (await world.verify(verifier, world.token())).verified
        fetched = world.jwks_clock()

        # The verifier's clock alone moves past the bound. Its set is stale: it asks for a
        # refresh, which the jwks service (its own clock within the cooldown) answers with
        # the same set, so the token is refused with 503.
        world.verifier_clock.advance(BOUND + 1)
        verdict = await world.verify(verifier, world.token())
        assert verdict.code == "unavailable"
        assert verdict.description == (
            f"keys of {dev.issuer} are stale: last fetched {BOUND + 1:.0f} s ago, "
            f"more than the {BOUND:.0f} s allowed"
        )
        assert sample(verifier, "trustpub_verifier_stale_keys_total", issuer=dev.issuer) == 1
        assert sample(verifier, "trustpub_verifier_keyset_age_seconds", issuer=dev.issuer) == BOUND + 1
        status, body = await readyz(verifier)
        assert status == 200  # stays ready; says which issuer lacks usable keys
        assert body["advisories"][f"keys {dev.issuer}"] is False

        # The jwks service's clock moves too, and the issuer is down: the refresh fails, the
        # set stays as old as it is, and the jwks service is not ready any more.
        dev.mode = "error"
        world.jwks_clock.advance(BOUND + 1)
        verdict = await world.verify(verifier, world.token())
        assert verdict.code == "unavailable"
        assert verdict.description.startswith(f"keys of {dev.issuer} are stale: last fetched")
        assert refreshes(jwks, dev.issuer, "error") == 1
        status, body = await readyz(jwks)
        assert status == 503
        assert body["checks"][f"keys {dev.issuer}"] is False
        assert body["checks"][f"keys {other.issuer}"] is False  # nothing refreshed it either

        # The issuer is back. Past the cooldown the next token refreshes (a fresh
        # fetched_at) and verifies again.
        dev.mode = "ok"
        world.advance(COOLDOWN + 1)
        assert (await world.verify(verifier, world.token())).verified
        assert refreshes(jwks, dev.issuer, "unchanged") == 1
        stored = await world.stored(nc, dev.issuer)
        assert stored is not None
        assert stored.fetched_at == world.jwks_clock() > fetched
        assert sample(verifier, "trustpub_verifier_stale_keys_total", issuer=dev.issuer) == 2
        assert (await readyz(verifier))[1]["advisories"][f"keys {dev.issuer}"] is True
        assert (await readyz(jwks))[1]["checks"][f"keys {dev.issuer}"] is True
