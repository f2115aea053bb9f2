"""Fixtures of the registry tests: a connection to the session database, the registry service
running in-process on this test's subject root (with the events stream, for the tests of the
delivery reports), and the ``trustpub`` command."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.support.registry import registry_running

from trustpub.registry.cli import main
from trustpub.registry.pool import connect
from trustpub.runtime import Runtime
from trustpub.runtime.events import ensure_stream


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[Any]:
    c = await asyncio.wait_for(connect(database_url), 10)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def registry(common: dict[str, str], database_url: str) -> AsyncIterator[Runtime]:
    async with registry_running(common, database_url) as rt:
        yield rt


@pytest.fixture
async def events_stream(registry: Runtime) -> None:
    """The events stream of the registry's root, as the gateway creates it in production (the
    delivery reports arrive through it)."""
    await asyncio.wait_for(ensure_stream(registry.nc.jetstream(), registry.subjects), 10)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, database_url: str, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``trustpub ARGS`` (in a thread: the CLI runs its own event loop) -> (code, out, err)."""
    monkeypatch.setenv("TRUSTPUB_DATABASE_URL", database_url)
    monkeypatch.delenv("TRUSTPUB_ISSUERS_FILE", raising=False)

    async def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.wait_for(asyncio.to_thread(main, list(args)), 60)
        out, err = capsys.readouterr()
        return code, out, err

    return run
