"""The fetcher against misbehaving HTTP servers on loopback (streams without a length)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from deploy.devstack.issuer import SigningKey
from tests.support.waiting import bounded

from trustpub.jwks.fetch import Fetcher, FetchError, cache_max_age, new_session
from trustpub.providers.issuers import Issuer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/jwks", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/jwks"
    finally:
        await runner.cleanup()


def issuer(url: str) -> Issuer:
    return Issuer(
        issuer="https://token.actions.githubusercontent.com",
        provider="github",
        jwks_url=url,
        allow_loopback_http=True,
    )


async def fetch(url: str, *, timeout: float = 2.0, max_bytes: int = 262_144):
    async with new_session(timeout) as session:
        fetcher = Fetcher(session, timeout=timeout, max_bytes=max_bytes, max_keys=50)
        return await bounded(fetcher.fetch(issuer(url)))


async def test_a_chunked_body_is_cut_past_the_cap():
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)  # chunked: no Content-Length to trust
        await resp.write(b'{"keys": [], "pad": "')
        with contextlib.suppress(ConnectionError):
            for _ in range(1000):  # 64 MiB at most, should the client not stop reading
                await resp.write(b"x" * 65536)
                sent += 65536
        return resp

    async with serve(endless) as url:
        with pytest.raises(FetchError) as err:
            await fetch(url, max_bytes=262_144)
    assert err.value.result == "refused"
    assert "is over 262144 bytes" in err.value.reason
    # The client stopped reading soon after the cap (the kernel buffers some more).
    assert sent < 32 * 1024 * 1024


async def test_a_slow_drip_is_cut_at_the_time_budget():
    drips, every = 600, 0.05  # a byte every 50 ms for 30 s: each read comes in time

    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(drips):
                await resp.write(b" ")
                await asyncio.sleep(every)
        return resp

    async with serve(drip) as url:
        started = time.monotonic()
        with pytest.raises(FetchError) as err:
            await fetch(url, timeout=0.5)
        elapsed = time.monotonic() - started
    assert err.value.result == "error"
    assert "no " in err.value.reason
    assert "within 0.5 s" in err.value.reason
    # Cut by the budget of the whole fetch, long before the drip ends (no tighter bound: a
    # loaded machine stretches any duration).
    assert elapsed < drips * every / 2


async def test_a_good_key_set_is_accepted_and_a_500_is_an_error():
    key = SigningKey.generate("k1")
    status = 200

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response({"keys": [key.public_jwk()]}, status=status)

    async with serve(jwks) as url:
        valid = await fetch(url)
        assert valid.keys == [key.public_jwk()]
        status = 503
        with pytest.raises(FetchError) as err:
            await fetch(url)
    assert err.value.result == "error"
    assert err.value.reason.endswith("answered HTTP 503")


async def test_connection_refused_is_an_error():
    async def empty(_: web.Request) -> web.Response:
        return web.json_response({})

    async with serve(empty) as url:
        pass  # the port is closed again
    with pytest.raises(FetchError) as err:
        await fetch(url)
    assert err.value.result == "error"
    assert "ClientConnectorError" in err.value.reason


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        (["max-age=600"], 600.0),
        (["public, max-age=19008, must-revalidate, no-transform"], 19008.0),
        (['max-age="120"'], 120.0),
        (["no-cache"], 0.0),
        (["private", "no-store"], 0.0),
        (["max-age=600", "max-age=60"], 60.0),  # the most conservative wins
        (["max-age=-5"], None),
        (["max-age=1e9"], None),
        (["max-age=99999999999"], None),
        (["max-age=\u0661\u0662"], None),  # Arabic-Indic digits: isdigit() says yes, HTTP says no
        (["s-maxage=600"], None),
    ],
)
def test_cache_control_max_age(headers, expected):
    assert cache_max_age(headers) == expected


async def test_the_key_set_max_age_is_reported():
    key = SigningKey.generate("k1")

    async def with_max_age(_: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"keys": [key.public_jwk()]}, headers={"Cache-Control": "public, max-age=1200"}
        )

    async with serve(with_max_age) as url:
        valid = await fetch(url)
    assert valid.kids == ["k1"]
    assert valid.max_age == 1200.0
