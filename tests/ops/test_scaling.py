"""Scaling the verifier out, and losing replicas under load.

Two verifier processes share the NATS queue group; both take a share of the requests with
no configuration. Stopping one with SIGTERM during load loses no request: it turns not
ready, keeps serving through its drain grace, drains NATS and exits 0. Killing one with
SIGKILL costs only the requests it held at that moment: each answers 503 `unavailable`
at the gateway's deadline, and every request sent after the kill succeeds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from collections.abc import Callable

import aiohttp
import pytest
from tests.ops.live_support import Live, Result, exchange, live_stack, metric_value

REQUEST_TIMEOUT = 2.0  # the gateway's deadline for one exchange, seconds
CONCURRENCY = 8
ENDPOINT = "token.verify"
PACE_S = 0.02
FROZEN_S = 0.3


def verifies(live: Live, key: str) -> float:
    """Requests this verifier process answered (its own /metrics)."""
    text = live.stack.metrics(key)
    return metric_value(text, "trustpub_nats_endpoint_duration_seconds_count", endpoint=ENDPOINT)


async def load(live: Live, results: list[Result], stop: asyncio.Event, limit: int = 5000) -> None:
    """Fresh tokens, ``CONCURRENCY`` exchanges at a time, until ``stop`` (or ``limit``)."""
    sent = 0
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal sent
            while not stop.is_set() and sent < limit:
                sent += 1
                results.append(await exchange(session, live.mint_url, live.token()))
                # Paced (a few hundred exchanges a second at most): enough to keep requests
                # in flight at every moment, without starving the rest of a shared machine.
                await asyncio.sleep(PACE_S)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(CONCURRENCY))), 120)


async def until_done(results: list[Result], count: int, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(results) < count:
        assert asyncio.get_running_loop().time() < deadline, f"{len(results)} of {count} exchanges done"
        await asyncio.sleep(0.01)


async def under_load(
    live: Live, action: Callable[[], object], then: float = 0.0
) -> tuple[list[Result], float, float]:
    """Run ``action`` (blocking, in a thread) after 40 exchanges, and keep the load on until
    40 more have completed after it and ``then`` seconds have passed; returns the results
    and when the action began and ended."""
    results: list[Result] = []
    stop = asyncio.Event()
    running = asyncio.create_task(load(live, results, stop))
    await until_done(results, 40)
    began = time.monotonic()
    await asyncio.to_thread(action)
    ended = time.monotonic()
    await asyncio.sleep(then)
    await until_done(results, len(results) + 40)
    stop.set()
    await running
    return results, began, ended


def ready(live: Live, key: str) -> bool:
    try:
        with urllib.request.urlopen(f"{live.stack.ops_url(key)}/readyz", timeout=1) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_verifiers_share_the_work_drain_on_sigterm_and_cost_only_held_requests_on_sigkill(
    tmp_path, bus, database_url
):
    env = {"TRUSTPUB_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT)}
    async with live_stack(tmp_path, bus, database_url, env) as live:
        stack = live.stack
        await asyncio.to_thread(stack.start, "verifier", replica="-2")

        # -- both take a share ---------------------------------------------------------
        results: list[Result] = []
        stop = asyncio.Event()
        await load(live, results, stop, limit=120)
        assert [r.status for r in results] == [200] * 120
        shares = {key: await asyncio.to_thread(verifies, live, key) for key in ("verifier", "verifier-2")}
        assert sum(shares.values()) == 120
        # A queue group spreads requests at random: with 120 requests, a share under 20%
        # would mean one replica is not taking work (chance of it by luck: below 1e-10).
        assert min(shares.values()) >= 24, shares

        # -- SIGTERM under load: nothing lost ----------------------------------------------
        codes: list[int | None] = []
        results, stopping, stopped = await under_load(
            live, lambda: codes.append(stack.stop("verifier-2", signal.SIGTERM))
        )
        assert codes == [0], "a verifier stopped with SIGTERM exits cleanly"
        statuses = [r.status for r in results]
        assert statuses == [200] * len(results), {s: statuses.count(s) for s in set(statuses)}
        # Requests kept coming during the whole drain (grace, then NATS drain) and after it.
        during = [r for r in results if stopping <= r.started <= stopped]
        assert len(during) >= CONCURRENCY, len(during)
        assert stopped - stopping < 10

        # -- SIGKILL under load: only what it held -------------------------------------------
        await asyncio.to_thread(stack.start, "verifier", replica="-3")
        assert await asyncio.to_thread(ready, live, "verifier-3")
        pid = stack.procs["verifier-3"].popen.pid

        def die_mid_work() -> None:
            # A verification takes about a millisecond, so at a random instant the process
            # likely holds nothing. Frozen first, it keeps receiving its share and holds those
            # requests when it dies, as a process that dies in the middle of its work does.
            os.kill(pid, signal.SIGSTOP)
            time.sleep(FROZEN_S)
            stack.stop("verifier-3", signal.SIGKILL)

        # The load goes on past the deadline, so the requests the process held come back.
        results, _, killed = await under_load(live, die_mid_work, then=REQUEST_TIMEOUT + 1)

        failed = [r for r in results if r.status != 200]
        assert {(r.status, r.code) for r in failed} <= {(503, "unavailable")}
        # What it held, and no more than was in flight: one request per client connection.
        assert 1 <= len(failed) <= CONCURRENCY, len(failed)
        for r in failed:
            # Each was sent before the process died, and was answered at the deadline
            # (plus scheduling slack), never left hanging.
            assert r.started <= killed
            assert REQUEST_TIMEOUT - 0.1 <= r.elapsed <= REQUEST_TIMEOUT + 1.0, r.elapsed
        # Everything sent once the process was gone went to the surviving verifier.
        after = [r for r in results if r.started > killed]
        assert len(after) >= 40
        assert [r.status for r in after] == [200] * len(after)
        assert ready(live, "verifier")
