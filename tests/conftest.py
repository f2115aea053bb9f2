"""Shared fixtures: real NATS (JetStream) and PostgreSQL, a local OIDC issuer.

NATS always runs as trustpub runs it: with the authorization generated from the endpoint
declarations for a pool of subject roots, each service its own nkey user, TLS first
(deploy/devstack/bus.py); the suite starts it under a temporary directory. A test takes a root from
the pool (``subject_root``) whose streams and buckets were emptied first, so tests never see
each other's messages. ``TRUSTPUB_TEST_DATABASE_URL`` names an existing PostgreSQL; when
unset, the suite starts its own. The session gets its own database.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from deploy.devstack.bus import DevBus
from deploy.devstack.issuer import DevIssuer
from deploy.devstack.servers import NatsServer, PostgresServer
from hypothesis.configuration import set_hypothesis_home_dir
from tests.support.bus import ROOTS, TestBus
from tests.support.services import AUDIENCE, create_database


def pytest_configure(config: pytest.Config) -> None:
    # Hypothesis keeps caches (and by default its example database) under .hypothesis/ in the
    # working directory; the fuzz tests (tests/corpus, the admin API's) keep them out of the
    # work tree, whichever of them runs.
    home = tempfile.mkdtemp(prefix="trustpub-hypothesis-")
    set_hypothesis_home_dir(home)
    atexit.register(shutil.rmtree, home, ignore_errors=True)


@contextlib.contextmanager
def _server_dir(name: str) -> Iterator[Path]:
    # Not tmp_path_factory: pytest prunes old base temp dirs, and a second pytest run on
    # the machine would delete a running server's data directory.
    path = Path(tempfile.mkdtemp(prefix=f"trustpub-test-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def bus() -> Iterator[TestBus]:
    """The session's NATS: generated authorization for every root of the pool, TLS first."""
    with _server_dir("nats") as path:
        server = NatsServer(path / "data", roots=ROOTS, bus=DevBus(path / "bus", admin=True)).start(
            log_file=path / "nats.log"
        )
        try:
            yield TestBus(server)
        finally:
            server.stop()


@pytest.fixture(scope="session")
def nats_url(bus: TestBus) -> str:
    return bus.url


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    url = os.environ.get("TRUSTPUB_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with _server_dir("pg") as path:
        server = PostgresServer(path, fast=True).start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture(scope="session")
async def database_url(pg_admin_url: str) -> str:
    """A fresh database for this test session, with every migration applied."""
    return await create_database(pg_admin_url)


@pytest.fixture
async def subject_root(bus: TestBus) -> AsyncIterator[str]:
    """A NATS subject root of this test's own, its streams and buckets empty."""
    root = await bus.lease()
    try:
        yield root
    finally:
        bus.release(root)


@pytest.fixture
async def dev_issuer() -> AsyncIterator[DevIssuer]:
    """A local issuer playing GitHub Actions, with real RSA keys, served over HTTP."""
    issuer = DevIssuer()
    async with issuer.serve():
        yield issuer


@pytest.fixture
def issuers_file(tmp_path: Path, dev_issuer: DevIssuer) -> Path:
    path = tmp_path / "issuers.toml"
    path.write_text(dev_issuer.issuers_toml())
    return path


@pytest.fixture
def common(bus: TestBus, subject_root: str) -> dict[str, str]:
    """Environment every in-process service of a test shares (pass to ``load``): each service
    finds its own credentials and seal keys in the bus's secrets directory."""
    return {
        **bus.env,
        "TRUSTPUB_SUBJECT_ROOT": subject_root,
        "TRUSTPUB_OPS_PORT": "0",
        "TRUSTPUB_DRAIN_GRACE": "0",
        "TRUSTPUB_AUDIENCE": AUDIENCE,
    }
