"""The rate limit across gateway replicas (DESIGN.md, "The rate limit across replicas"): two
gateways on real NATS share the levels of the clients that come near their limit through a
JetStream bucket, so a client over its limit on one replica is refused by the other; with
the bucket unreachable, each replica still holds the limit on its own.

The gateways run in this process; a request whose body is not JSON is answered 422 by the
gateway itself (no other service needed), after the rate limit has counted it. Clients are
told apart by ``X-Forwarded-For`` from the test's address, a trusted proxy.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from deploy.devstack.bus import DevBus
from deploy.devstack.servers import NatsServer
from tests.support.services import running
from tests.support.waiting import until

from trustpub.gateway.app import setup
from trustpub.gateway.config import Settings
from trustpub.runtime import Runtime, load

# A rate so low that no token comes back while a test runs: counts are exact.
RATE = 0.001
BURST = 6
MINT = "/_/oidc/mint-token"


def gateway_env(common: dict[str, str]) -> dict[str, str]:
    return {
        **common,
        "TRUSTPUB_HTTP_PORT": "0",
        "TRUSTPUB_MINTER_KEY_IDS": "a-minter-key-id",
        "TRUSTPUB_RATE_LIMIT": str(RATE),
        "TRUSTPUB_RATE_LIMIT_BURST": str(BURST),
        "TRUSTPUB_RATE_LIMIT_SYNC": "0.05",
        "TRUSTPUB_TRUSTED_PROXIES": "127.0.0.1",
        "TRUSTPUB_REQUEST_TIMEOUT": "2",
    }


@contextlib.asynccontextmanager
async def two_gateways(env: dict[str, str]) -> AsyncIterator[tuple[Runtime, Runtime]]:
    async with (
        running(Runtime("gateway", load(Settings, env)), setup) as a,
        running(Runtime("gateway", load(Settings, env)), setup) as b,
    ):
        yield a, b


def metric(rt: Runtime, name: str) -> float:
    return rt.registry.get_sample_value(name) or 0.0


async def post(http: aiohttp.ClientSession, rt: Runtime, client: str) -> int:
    url = f"http://127.0.0.1:{rt.http_port}{MINT}"
    async with http.post(url, data=b"not json", headers={"X-Forwarded-For": client}) as resp:
        await resp.read()
        return resp.status


async def statuses(http: aiohttp.ClientSession, rt: Runtime, client: str, count: int) -> list[int]:
    return [await post(http, rt, client) for _ in range(count)]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def test_a_client_over_its_limit_on_one_replica_is_refused_by_the_other(
    common: dict[str, str], http: aiohttp.ClientSession
) -> None:
    async with two_gateways(gateway_env(common)) as (a, b):
        await until(lambda: metric(a, "trustpub_http_rate_limit_shared_up") == 1, "a's bucket up")
        await until(lambda: metric(b, "trustpub_http_rate_limit_shared_up") == 1, "b's bucket up")
        # The whole burst on A, then A refuses.
        assert await statuses(http, a, "203.0.113.1", BURST + 1) == [422] * BURST + [429]
        # B learns the client's level from the bucket and refuses it with its own bucket still
        # full: at once when it holds A's last count, after the rest of the level A had folded
        # in so far otherwise (A shares a client once it has spent half its burst).
        await until(lambda: metric(b, "trustpub_http_rate_limit_shared_clients") >= 1, "b sees the client")
        on_b = await statuses(http, b, "203.0.113.1", BURST)
        assert 429 in on_b, on_b
        admitted = on_b.index(429)
        assert admitted <= BURST - BURST // 2, on_b
        assert on_b == [422] * admitted + [429] * (BURST - admitted)
        # Another client is not held up.
        assert await statuses(http, b, "203.0.113.2", 2) == [422, 422]

        # A client that spreads its requests over both replicas gets one burst, not two: half
        # on A (which then shares it), the rest on B once B sees it.
        half = BURST // 2
        shared_before = metric(b, "trustpub_http_rate_limit_shared_clients")
        assert await statuses(http, a, "203.0.113.3", half) == [422] * half
        await until(
            lambda: metric(b, "trustpub_http_rate_limit_shared_clients") > shared_before, "b sees the client"
        )
        assert await statuses(http, b, "203.0.113.3", BURST - half + 1) == [422] * (BURST - half) + [429]


@pytest.fixture
async def private_nats() -> AsyncIterator[NatsServer]:
    """A NATS of this test's own, which it stops: the bucket becomes unreachable."""
    path = Path(tempfile.mkdtemp(prefix="trustpub-test-limit-nats-"))
    server = NatsServer(path / "data", roots=("t",), bus=DevBus(path / "bus")).start(
        log_file=path / "nats.log"
    )
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(path, ignore_errors=True)


async def test_with_the_bucket_unreachable_each_replica_still_holds_the_limit(
    private_nats: NatsServer, http: aiohttp.ClientSession
) -> None:
    common = {
        **private_nats.client_env(),
        "TRUSTPUB_SUBJECT_ROOT": "t",
        "TRUSTPUB_OPS_PORT": "0",
        "TRUSTPUB_DRAIN_GRACE": "0",
    }
    async with two_gateways(gateway_env(common)) as (a, b):
        await until(lambda: metric(a, "trustpub_http_rate_limit_shared_up") == 1, "a's bucket up")
        await until(lambda: metric(b, "trustpub_http_rate_limit_shared_up") == 1, "b's bucket up")
        private_nats.stop()
        await until(lambda: metric(a, "trustpub_http_rate_limit_shared_up") == 0, "a falls back")
        await until(lambda: metric(b, "trustpub_http_rate_limit_shared_up") == 0, "b falls back")
        # Each replica admits one burst of the client and refuses the rest: its own limit.
        assert await statuses(http, a, "203.0.113.9", BURST + 2) == [422] * BURST + [429] * 2
        assert await statuses(http, b, "203.0.113.9", BURST + 2) == [422] * BURST + [429] * 2
        assert metric(a, "trustpub_http_rate_limit_shared_clients") == 0
