"""Fixtures of the corpus: the cast's keys (session), and for the end-to-end level a stack of
its own (five service processes, its own database and subject root, the cast's issuers served
on loopback, the attacker's identity provider beside them, configured nowhere)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from deploy.devstack.issuer import DevIssuer
from deploy.devstack.stack import Stack
from tests.corpus.corpus_keys import (
    AUD,
    OTHER_PUBLISHERS,
    PENDING,
    PUBLISHERS,
    AttackerIdP,
    Cast,
    cli_args,
    issuers_toml,
    pending_args,
)
from tests.support.bus import ADMIN, TestBus
from tests.support.corpus import CorpusStack, Probe
from tests.support.services import create_database

from trustpub.messages.endpoints import TOKEN_MINT
from trustpub.registry import cli


@pytest.fixture(scope="session")
def cast() -> Cast:
    return Cast()


@pytest.fixture(scope="session")
async def corpus_database(pg_admin_url: str) -> str:
    """A database of the corpus's own: its publishers and its counts are exact."""
    return await create_database(pg_admin_url)


@pytest.fixture(scope="session")
def corpus_stack(
    cast: Cast, bus: TestBus, corpus_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CorpusStack]:
    root = tmp_path_factory.mktemp("corpus")
    subject_root = bus.lease_blocking()
    with contextlib.ExitStack() as running:
        idps: dict[str, DevIssuer] = {}
        for issuer, key in cast.by_issuer().items():
            dev = DevIssuer(issuer=issuer, keys=[key])
            running.enter_context(dev.serve_in_thread())
            idps[issuer] = dev
        attacker = AttackerIdP(keys=[cast.att, cast.att_ec])
        running.enter_context(attacker.serve_in_thread())
        attacker.issuer = attacker.base_url  # its discovery document names itself
        (root / "issuers.toml").write_text(issuers_toml({i: d.base_url for i, d in idps.items()}))
        env = {
            **bus.env,
            "TRUSTPUB_SUBJECT_ROOT": subject_root,
            "TRUSTPUB_DATABASE_URL": corpus_database,
            "TRUSTPUB_ISSUERS_FILE": str(root / "issuers.toml"),
            "TRUSTPUB_AUDIENCE": AUD,
            "TRUSTPUB_DRAIN_GRACE": "0.2",
            "TRUSTPUB_REQUEST_TIMEOUT": "5",
            "TRUSTPUB_LOG_LEVEL": "info",
        }
        stack = Stack(env, log_dir=root / "logs")
        stack.start_all()
        running.callback(stack.stop_all)
        db = ["--database-url", corpus_database]
        for issuer, project, fields in PUBLISHERS:
            assert cli.main(["project", "add", project, *db]) == 0
            assert cli.main([*cli_args(issuer, project, fields), *db]) == 0
        for provider, issuer, project, _, args in OTHER_PUBLISHERS:
            assert cli.main(["project", "add", project, *db]) == 0
            cmd = ["publisher", "add", provider, "--project", project, "--issuer", issuer, *args, *db]
            assert cli.main(cmd) == 0
        for project, repository in PENDING:
            assert cli.main([*pending_args(project, repository), *db]) == 0
        # M1: the project appears (spelt differently) after its pending publisher; M2: expired.
        assert cli.main(["project", "add", "M1_Pkg", *db]) == 0
        asyncio.run(_expire_pending(corpus_database, "m2repo"))
        yield CorpusStack(stack, env, corpus_database, idps, attacker, root)


async def _expire_pending(database_url: str, repository: str) -> None:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        done = await conn.execute(
            "UPDATE pending_publishers SET created_at = now() - interval '31 days', "
            "expires_at = now() - interval '1 day' WHERE spec->>'repository' = $1",
            repository,
        )
        assert done == "UPDATE 1", done
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def probe(corpus_stack: CorpusStack, bus: TestBus) -> AsyncIterator[Probe]:
    conn = await asyncio.wait_for(asyncpg.connect(corpus_stack.database_url), 10)
    subject_root = corpus_stack.env["TRUSTPUB_SUBJECT_ROOT"]
    # The suite's own identity: it may listen where no service may, to count mint requests.
    nc = await bus.connect(ADMIN, subject_root)
    p = Probe(corpus_stack, conn)

    async def seen(msg: Any) -> None:
        p.mint_requests.append(msg.data)

    await nc.subscribe(TOKEN_MINT.subject(subject_root), cb=seen)
    await nc.flush()
    try:
        yield p
    finally:
        await nc.close()
        await conn.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session
