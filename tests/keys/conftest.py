"""Fixtures of the keys tests: two local issuers on loopback, served by the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from deploy.devstack.issuer import DevIssuer, SigningKey
from tests.support.bus import TestBus
from tests.support.keys import OTHER_ISSUER, IssuerServer, World


@pytest.fixture
async def world(tmp_path: Path, common: dict[str, str], bus: TestBus) -> AsyncIterator[World]:
    dev = DevIssuer()  # GitHub Actions' issuer string, keys on loopback
    other = DevIssuer(issuer=OTHER_ISSUER, keys=[SigningKey.generate("gl-1")])
    servers = {dev.issuer: IssuerServer(dev), other.issuer: IssuerServer(other)}
    for server in servers.values():
        await server.start()
    world = World(dev=dev, other=other, servers=servers, tmp=tmp_path, common=common, bus=bus)
    try:
        yield world
    finally:
        await world.close()
        for server in servers.values():
            await server.stop()
