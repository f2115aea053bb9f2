"""The jwks service in-process against a local issuer: real HTTP, real NATS and KV."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import msgspec
import pytest
from aiohttp import web
from deploy.devstack.issuer import DevIssuer, SigningKey
from structlog.testing import capture_logs
from tests.support.jwks import JwksTest, jwks_service, kids, serve_briefly, wait_for
from tests.support.waiting import WAIT_S, bounded

from trustpub.messages.v1 import ErrorReply, KeySet, KeySetRotated, RefreshRequest

COOLDOWN = 60.0  # the default refresh_cooldown; tests move the clock past it


def refresh_count(rt, issuer: str, result: str) -> float:
    sample = {"issuer": issuer, "result": result}
    return rt.registry.get_sample_value("trustpub_jwks_refresh_total", sample) or 0


def gauge(rt, name: str, issuer: str) -> float | None:
    return rt.registry.get_sample_value(name, {"issuer": issuer})


async def test_fetch_on_start_lands_the_set_in_kv(jw: JwksTest):
    dev = jw.dev
    async with jw.service() as rt, jw.nats() as nc:
        ks = await jw.stored()
        assert ks.issuer == dev.issuer
        assert ks.keys == [dev.keys[0].public_jwk()]
        assert abs(ks.fetched_at - jw.clock()) < 1
        assert ks.checked_at == ks.fetched_at
        assert dev.hits == {"discovery": 1, "jwks": 1}

        reply = await jw.read(nc, dev.issuer)
        assert reply == ks

        assert gauge(rt, "trustpub_jwks_keys", dev.issuer) == 1
        assert refresh_count(rt, dev.issuer, "ok") == 1
        jw.clock.advance(100)
        assert gauge(rt, "trustpub_jwks_keyset_age_seconds", dev.issuer) == pytest.approx(100)

        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(f"http://127.0.0.1:{rt.ops_port}/readyz") as resp:
                body = await resp.json()
            assert resp.status == 200
            # One check per enabled issuer: it has a usable set in the bucket.
            assert body["checks"] == {"nats": True, "jwks_bucket": True, f"keys {dev.issuer}": True}

            # Past the staleness bound (24 h by default) the set is no longer usable.
            jw.clock.advance(86400)
            async with http.get(f"http://127.0.0.1:{rt.ops_port}/readyz") as resp:
                body = await resp.json()
            assert resp.status == 503
            assert body["checks"][f"keys {dev.issuer}"] is False


async def test_unknown_kid_refreshes_once_and_returns_the_new_key(jw: JwksTest):
    dev = jw.dev
    async with jw.service() as rt, jw.nats() as nc:
        await jw.stored()
        rotated = await nc.subscribe(jw.subjects.event("jwks", "rotated"))
        dev.keys.append(SigningKey.generate("dev-2"))
        jw.clock.advance(COOLDOWN + 1)

        reply = await jw.ask(nc, RefreshRequest(issuer=dev.issuer, kid="dev-2"))
        assert isinstance(reply, KeySet)
        assert kids(reply) == ["dev-1", "dev-2"]
        assert dev.hits["jwks"] == 2
        stored = await jw.read(nc, dev.issuer)
        assert stored == reply
        assert stored.fetched_at == jw.clock()
        assert refresh_count(rt, dev.issuer, "ok") == 2

        # The first set's own event (old_kids []) may arrive after the subscription: skip it.
        event = msgspec.json.decode((await rotated.next_msg(timeout=WAIT_S)).data, type=KeySetRotated)
        if event.old_kids == []:
            event = msgspec.json.decode((await rotated.next_msg(timeout=WAIT_S)).data, type=KeySetRotated)
        assert (event.issuer, event.old_kids, event.new_kids) == (dev.issuer, ["dev-1"], ["dev-1", "dev-2"])
        assert event.replaced_kids == []

        # Past the cooldown, a kid that the stored set already has costs no fetch (another
        # replica, or an earlier request, refreshed already).
        jw.clock.advance(COOLDOWN + 1)
        again = await jw.ask(nc, RefreshRequest(issuer=dev.issuer, kid="dev-2"))
        assert again == reply
        assert dev.hits["jwks"] == 2


async def test_withdrawn_key_disappears_after_a_refresh(jw: JwksTest):
    dev = jw.dev
    async with jw.service() as rt, jw.nats() as nc:
        await jw.stored()
        dev.keys[:] = [SigningKey.generate("dev-2")]
        jw.clock.advance(COOLDOWN + 1)
        reply = await jw.ask(nc, RefreshRequest(issuer=dev.issuer, kid="dev-2"))
        assert kids(reply) == ["dev-2"]
        assert kids(await jw.read(nc, dev.issuer)) == ["dev-2"]
        assert gauge(rt, "trustpub_jwks_keys", dev.issuer) == 1


async def test_periodic_refresh_drops_a_withdrawn_key_within_one_period(jw: JwksTest):
    # The real clock here: the periodic loop sleeps for real.
    env = jw.env(refresh_interval="0.5")
    async with jwks_service(env, time.time):
        await jw.stored()
        jw.dev.keys[:] = [SigningKey.generate("dev-3")]
        ks = await jw.stored(lambda ks: kids(ks) == ["dev-3"])
        assert ks.keys == [jw.dev.keys[0].public_jwk()]


async def test_flood_of_random_kids_makes_at_most_one_fetch(jw: JwksTest):
    dev = jw.dev
    async with jw.service() as rt, jw.nats() as nc:
        first = await jw.stored()
        jw.clock.advance(COOLDOWN + 1)
        before = dict(dev.hits)
        requests = [RefreshRequest(issuer=dev.issuer, kid=uuid.uuid4().hex) for _ in range(50)]
        replies = await bounded(asyncio.gather(*(jw.ask(nc, r) for r in requests)))
        assert all(isinstance(r, KeySet) and r.keys == first.keys for r in replies)
        assert dev.hits["jwks"] - before["jwks"] == 1
        assert dev.hits["discovery"] - before["discovery"] == 1
        # One fetch (it found the same keys); the requests that came after it were in cooldown.
        assert refresh_count(rt, dev.issuer, "unchanged") == 1

        # Still within the cooldown: no fetch at all.
        jw.clock.advance(COOLDOWN / 2)
        more = await jw.ask(nc, RefreshRequest(issuer=dev.issuer, kid="nope"))
        assert isinstance(more, KeySet)
        assert dev.hits["jwks"] - before["jwks"] == 1
        assert refresh_count(rt, dev.issuer, "cooldown") >= 1


async def test_issuer_down_keeps_the_last_good_set(jw: JwksTest):
    dev = jw.dev
    async with jw.service() as rt, jw.nats() as nc:
        good = await jw.stored()
        dev.mode = "error"
        jw.clock.advance(COOLDOWN + 1)
        with capture_logs() as logs:
            reply = await jw.ask(nc, RefreshRequest(issuer=dev.issuer, kid="dev-9"))
        assert isinstance(reply, KeySet)
        assert reply.keys == good.keys
        assert reply.fetched_at == good.fetched_at
        assert reply.checked_at == jw.clock()
        assert await jw.read(nc, dev.issuer) == reply
        [failed] = [e for e in logs if e["event"] == "jwks_fetch_failed"]
        assert failed["issuer"] == dev.issuer
        assert failed["reason"].startswith(f"discovery document at {dev.base_url}/.well-known/")
        assert failed["reason"].endswith("answered HTTP 500")
        assert refresh_count(rt, dev.issuer, "error") == 1

        # The cooldown counts from that failed attempt too.
        hits = dev.hits["discovery"]
        again = await jw.ask(nc, RefreshRequest(issuer=dev.issuer, kid="dev-9"))
        assert again.keys == good.keys
        assert dev.hits["discovery"] == hits
        got = await jw.read(nc, dev.issuer)
        assert got.keys == good.keys

        # The age of the set grows while the issuer is down.
        age = gauge(rt, "trustpub_jwks_keyset_age_seconds", dev.issuer)
        assert age == pytest.approx(COOLDOWN + 1)

        # Back up: the next refresh after the cooldown succeeds.
        dev.mode = "ok"
        dev.keys.append(SigningKey.generate("dev-9"))
        jw.clock.advance(COOLDOWN + 1)
        back = await jw.ask(nc, RefreshRequest(issuer=dev.issuer, kid="dev-9"))
        assert kids(back) == ["dev-1", "dev-9"]


async def test_hanging_issuer_is_cut_at_fetch_timeout(jw: JwksTest):
    # Its own issuer: the shared fixture would wait out aiohttp's 60 s graceful shutdown
    # for the handler left hanging.
    async with serve_briefly(DevIssuer()) as dev:
        path = jw.issuers_file.parent / "hanging.toml"
        path.write_text(dev.issuers_toml())
        async with jwks_service(jw.env(path, fetch_timeout="0.5"), jw.clock) as rt, jw.nats() as nc:
            good = await jw.stored()
            dev.mode = "hang"
            jw.clock.advance(COOLDOWN + 1)
            started = time.monotonic()
            request = RefreshRequest(issuer=dev.issuer, kid="x")
            with capture_logs() as logs:
                # The handler hangs for an hour: any answer at all is the fetch cut short.
                replies = await bounded(asyncio.gather(*(jw.ask(nc, request) for _ in range(5))))
            elapsed = time.monotonic() - started
            assert elapsed >= 0.4  # not before the fetch timeout (no upper bound: CI is slow)
            [failed] = [e for e in logs if e["event"] == "jwks_fetch_failed"]
            assert failed["reason"].endswith("no answer within 0.5 s")
            assert all(r.keys == good.keys for r in replies)
            assert refresh_count(rt, dev.issuer, "error") == 1
            assert dev.hits["discovery"] == 2  # the start, then one fetch shared by all five


async def test_unconfigured_issuer_is_refused_without_any_request(jw: JwksTest):
    dev = jw.dev
    async with jw.service(), jw.nats() as nc:
        await jw.stored()
        jw.clock.advance(COOLDOWN + 1)
        before = dict(dev.hits)
        # The dev issuer's own base URL serves a discovery document: were it fetched, the
        # hit counters would show it. gitlab.com is built in but disabled in these tests.
        for issuer in (dev.base_url, "https://gitlab.com", "https://evil.example"):
            reply = await jw.ask(nc, RefreshRequest(issuer=issuer, kid="k"))
            assert isinstance(reply, ErrorReply)
            assert reply.code == "invalid-payload"
            assert reply.description == f"issuer {issuer!r} is not a configured, enabled issuer"
            assert await jw.read(nc, issuer) is None
        assert dev.hits == before
        assert await jw.read(nc, dev.base_url) is None


async def test_cold_start_with_the_issuer_down_is_unavailable(jw: JwksTest):
    dev = jw.dev
    dev.mode = "error"
    async with jw.service() as rt, jw.nats() as nc:
        # Ready although the only issuer is down; the start fetch runs in the background.
        assert rt.ready
        await wait_for(lambda: refresh_count(rt, dev.issuer, "error") == 1)
        reply = await jw.ask(nc, RefreshRequest(issuer=dev.issuer, kid="dev-1"))
        assert isinstance(reply, ErrorReply)
        assert reply.code == "unavailable"
        assert "answered HTTP 500" in reply.description
        assert await jw.read(nc, dev.issuer) is None
        assert dev.hits["discovery"] == 1

        # After the cooldown, a refresh while still down fails with the fetch's reason.
        jw.clock.advance(COOLDOWN + 1)
        reply = await jw.ask(nc, RefreshRequest(issuer=dev.issuer, kid="dev-1"))
        assert reply.code == "unavailable"
        assert "could not be fetched" in reply.description
        assert dev.hits["discovery"] == 2

        dev.mode = "ok"
        jw.clock.advance(COOLDOWN + 1)
        reply = await jw.ask(nc, RefreshRequest(issuer=dev.issuer, kid="dev-1"))
        assert kids(reply) == ["dev-1"]


async def test_a_second_replica_shares_the_stored_set(jw: JwksTest):
    dev = jw.dev
    async with jw.service(), jw.nats() as nc:
        first = await jw.stored()
        # The second replica finds the set that the first one checked within the cooldown:
        # it does not fetch at start. Refresh requests now reach either replica, and both
        # answer from the shared bucket within the cooldown.
        hits = dict(dev.hits)
        async with jw.service() as second:
            await wait_for(lambda: gauge(second, "trustpub_jwks_keys", dev.issuer) == 1)
            assert dev.hits == hits
            for _ in range(10):
                reply = await jw.ask(nc, RefreshRequest(issuer=dev.issuer, kid="zz"))
                assert reply.keys == first.keys
            assert dev.hits == hits


async def test_cache_control_max_age_may_shorten_the_refresh_period(jw: JwksTest, tmp_path):
    """DESIGN.md, "Keys of identity providers": max-age honoured within [5 min, 60 min], but never past the
    operator's interval (the bound on how long a withdrawn key keeps verifying)."""
    key = SigningKey.generate("cc-1")
    cache_control = {"value": "public, max-age=60"}

    async def jwks_doc(_: web.Request) -> web.Response:
        return web.json_response(
            {"keys": [key.public_jwk()]}, headers={"Cache-Control": cache_control["value"]}
        )

    app = web.Application()
    app.router.add_get("/jwks", jwks_doc)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    path = tmp_path / "cache-control.toml"
    path.write_text(
        f'[[issuer]]\nissuer = "{jw.dev.issuer}"\nprovider = "github"\n'
        f'jwks_url = "http://127.0.0.1:{port}/jwks"\nallow_loopback_http = true\n'
    )
    try:
        with capture_logs() as logs:
            async with jw.service(jw.env(path)), jw.nats() as nc:
                await jw.stored()
                for value in ("max-age=600", "max-age=86400", "no-store", ""):
                    cache_control["value"] = value
                    jw.clock.advance(COOLDOWN + 1)
                    await jw.ask(nc, RefreshRequest(issuer=jw.dev.issuer))
        periods = [e["next_refresh_s"] for e in logs if e["event"] == "jwks_refreshed"]
        # 60 s -> the 5 min floor; 600 s as given; a day -> the 15 min interval (not the
        # 60 min ceiling); no-store -> the floor; no header -> the interval.
        assert periods == [300.0, 600.0, 900.0, 300.0, 900.0]
    finally:
        await runner.cleanup()
