"""Helpers of the corpus's end-to-end level (tests/corpus/conftest.py starts its stack): the
stack and what it was given, the probe the invariants are checked with, and sending one attempt
as raw HTTP."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from deploy.devstack.issuer import DevIssuer
from deploy.devstack.stack import Stack
from tests.corpus.cases import Attempt
from tests.corpus.corpus_keys import AttackerIdP
from tests.support.waiting import WAIT_S


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
