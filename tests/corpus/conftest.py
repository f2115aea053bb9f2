"""Fixtures of the corpus: the cast's keys (session), and for the end-to-end level a stack of
its own (five service processes, its own database and subject root, the cast's issuers served
on loopback, the attacker's identity provider beside them, configured nowhere)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from deploy.devstack.issuer import DevIssuer
from deploy.devstack.stack import Stack
from hypothesis.configuration import set_hypothesis_home_dir
from tests.bus import ADMIN, TestBus
from tests.conftest import _create_database
from tests.corpus.cases import Attempt
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
from tests.waiting import WAIT_S

from trustpub.messages.endpoints import TOKEN_MINT
from trustpub.registry import cli

# Hypothesis keeps caches (and by default its example database) under .hypothesis/ in the
# working directory; the fuzz tests keep them out of the work tree.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="trustpub-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def cast() -> Cast:
    return Cast()


@dataclass
class CorpusStack:
    stack: Stack
    env: dict[str, str]
    database_url: str
    idps: dict[str, DevIssuer]
    attacker: AttackerIdP
    root: Path

    @property
    def base_url(self) -> str:
        return self.stack.base_url


@pytest.fixture(scope="session")
async def corpus_database(pg_admin_url: str) -> str:
    """A database of the corpus's own: its publishers and its counts are exact."""
    return await _create_database(pg_admin_url)


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


@dataclass
class Probe:
    """What the invariants are checked with: the database, and a listener on the minter's subject
    (a mint request on NATS is the other sign of a credential, V1)."""

    cs: CorpusStack
    conn: asyncpg.Connection
    mint_requests: list[bytes] = field(default_factory=list)

    async def mints(self) -> int:
        return int(await self.conn.fetchval("SELECT count(*) FROM mints"))

    async def audit_rows(self, exchange_id: str, *, wait: float = WAIT_S) -> list[dict[str, Any]]:
        """The audit rows of an exchange, once its ``exchange.*`` record is there: a rejection's
        arrives through JetStream, so wait for it (bounded). The registry may have written
        others for the same exchange (pending.converted, project.created, ...)."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            rows = await self.conn.fetch(
                "SELECT kind, outcome, code, detail::text AS detail FROM audit_events WHERE exchange_id = $1 "
                "ORDER BY id",
                exchange_id,
            )
            done = any(r["kind"].startswith("exchange.") for r in rows)
            if done or asyncio.get_running_loop().time() > deadline:
                return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]
            await asyncio.sleep(0.02)


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


async def send(
    http: aiohttp.ClientSession, base_url: str, attempt: Attempt
) -> tuple[int, str, dict[str, str]]:
    skip = () if "Content-Type" in attempt.headers else ("Content-Type",)
    # aiohttp warns about raw bytes of a megabyte or more (A8): stream those.
    data: bytes | io.BytesIO = attempt.body if len(attempt.body) < 1_000_000 else io.BytesIO(attempt.body)
    async with http.request(
        attempt.method,
        base_url + attempt.path,
        data=data,
        headers=attempt.headers,
        skip_auto_headers=skip,
    ) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session
