"""The whole stack as separate processes: HTTP in, real NATS and PostgreSQL behind.

One stack per session (five service processes, a local issuer in a thread of its own);
tests isolate themselves by registering publishers for repositories of their own.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from deploy.devstack.issuer import (
    ACTIVESTATE_ISSUER,
    GITLAB_ISSUER,
    GOOGLE_ISSUER,
    DevIssuer,
    SigningKey,
    offline_builtins_toml,
)
from deploy.devstack.stack import Stack
from tests.support.bus import TestBus
from tests.support.e2e import GHES_ISSUER, SELF_MANAGED_GITLAB_ISSUER, Publisher, register
from tests.support.services import AUDIENCE
from tests.support.waiting import WAIT_S


@pytest.fixture(scope="session")
def e2e_issuer() -> Iterator[DevIssuer]:
    issuer = DevIssuer()
    with issuer.serve_in_thread():
        yield issuer


@pytest.fixture(scope="session")
def provider_issuers() -> Iterator[dict[str, tuple[DevIssuer, str]]]:
    """Every other issuer of the e2e stack, by name: (the local issuer, its provider)."""
    wanted = {
        "gitlab": (GITLAB_ISSUER, "gitlab"),
        "google": (GOOGLE_ISSUER, "google"),
        "activestate": (ACTIVESTATE_ISSUER, "activestate"),
        "ghes": (GHES_ISSUER, "github"),
        "selfmanaged_gitlab": (SELF_MANAGED_GITLAB_ISSUER, "gitlab"),
    }
    with contextlib.ExitStack() as served:
        yield {
            name: (
                served.enter_context(
                    DevIssuer(issuer=iss, keys=[SigningKey.generate(f"{name}-1")]).serve_in_thread()
                ),
                provider,
            )
            for name, (iss, provider) in wanted.items()
        }


@pytest.fixture(scope="session")
def gitlab_issuer(provider_issuers: dict[str, tuple[DevIssuer, str]]) -> DevIssuer:
    return provider_issuers["gitlab"][0]


@pytest.fixture(scope="session")
def google_issuer(provider_issuers: dict[str, tuple[DevIssuer, str]]) -> DevIssuer:
    return provider_issuers["google"][0]


@pytest.fixture(scope="session")
def activestate_issuer(provider_issuers: dict[str, tuple[DevIssuer, str]]) -> DevIssuer:
    return provider_issuers["activestate"][0]


@pytest.fixture(scope="session")
def ghes_issuer(provider_issuers: dict[str, tuple[DevIssuer, str]]) -> DevIssuer:
    return provider_issuers["ghes"][0]


@pytest.fixture(scope="session")
def selfmanaged_gitlab_issuer(provider_issuers: dict[str, tuple[DevIssuer, str]]) -> DevIssuer:
    return provider_issuers["selfmanaged_gitlab"][0]


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
async def stack_root(bus: TestBus) -> str:
    """The e2e stack's subject root, leased for the whole session."""
    return await bus.lease()


@pytest.fixture(scope="session")
def stack_env(
    bus: TestBus,
    stack_root: str,
    database_url: str,
    e2e_issuer: DevIssuer,
    stack_dir: Path,
    provider_issuers: dict[str, tuple[DevIssuer, str]],
) -> dict[str, str]:
    root = stack_dir
    others = provider_issuers.values()
    (root / "issuers.toml").write_text(
        e2e_issuer.issuers_toml()
        + "".join("\n" + dev.issuers_toml(provider) for dev, provider in others)
        + offline_builtins_toml(e2e_issuer, *(dev for dev, _ in others))
    )
    return {
        **bus.env,
        "TRUSTPUB_SUBJECT_ROOT": stack_root,
        "TRUSTPUB_DATABASE_URL": database_url,
        "TRUSTPUB_ISSUERS_FILE": str(root / "issuers.toml"),
        "TRUSTPUB_AUDIENCE": AUDIENCE,
        "TRUSTPUB_DRAIN_GRACE": "0.2",
        "TRUSTPUB_REQUEST_TIMEOUT": "3",
        "TRUSTPUB_LOG_LEVEL": "debug",  # every service logs every exchange: the id must be in each
    }


@pytest.fixture(scope="session")
def stack(stack_env: dict[str, str], stack_dir: Path) -> Iterator[Stack]:
    s = Stack(stack_env, log_dir=stack_dir / "logs")
    s.start_all()
    try:
        yield s
    finally:
        s.stop_all()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
        yield session


@pytest.fixture
def publisher(stack: Stack, e2e_issuer: DevIssuer, stack_env: dict[str, str]) -> Publisher:
    """A fresh project and GitHub publisher (owner id 1001, workflow release.yml, env release)."""
    n = uuid.uuid4().hex[:8]
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    project = f"pkg-{n}"
    assert register(db, "project", "add", project) == 0
    assert (
        register(
            db,
            "publisher",
            "add",
            "github",
            "--project",
            project,
            "--owner",
            f"org-{n}",
            "--owner-id",
            "1001",
            "--repository",
            "demo",
            "--workflow",
            "release.yml",
            "--environment",
            "release",
        )
        == 0
    )
    return Publisher(e2e_issuer, f"org-{n}", "demo", project, owner_id="1001")
