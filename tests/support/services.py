"""A service of trustpub in this process, and a database of its own.

``running`` serves one service in the test's event loop, on its own NATS connection, as
``python -m trustpub.<name>`` would; ``create_database`` makes a fresh database with every
migration applied (the session's, or a test's own where its counts must be exact).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
from tests.support.waiting import WAIT_S

from trustpub.runtime import Runtime, serve
from trustpub.runtime.service import Setup

# The audience every in-process service of the suite and the e2e stack accept.
AUDIENCE = "trustpub-test"


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def create_database(admin_url: str) -> str:
    """A new database on the server of ``admin_url``, every migration applied; its URL."""
    name = f"trustpub_test_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = _with_db(admin_url, name)
    from trustpub.registry.migrations import apply  # noqa: PLC0415

    await apply(url)
    return url


@contextlib.asynccontextmanager
async def running(rt: Runtime, setup: Setup, timeout: float = WAIT_S) -> AsyncIterator[Runtime]:
    """Run one service in this event loop (its own NATS connection) until the block ends:
    entered once the service is ready."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(rt, setup, stop=stop))
    deadline = asyncio.get_running_loop().time() + timeout
    while not rt.ready:
        if task.done():
            task.result()  # raises what setup raised
            msg = f"{rt.name} stopped before it was ready"
            raise RuntimeError(msg)
        if asyncio.get_running_loop().time() > deadline:
            task.cancel()
            msg = f"{rt.name} not ready after {timeout} s"
            raise TimeoutError(msg)
        await asyncio.sleep(0.02)
    try:
        yield rt
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout)
