"""A whole trustpub stack as processes (as ``make up`` runs it) for the operations tests:
real NATS and PostgreSQL from the session fixtures, the five services, and a local issuer
playing GitHub Actions, with one publisher registered (its repository id pinned on first use)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from deploy.devstack.index import PypiServer
from deploy.devstack.issuer import DevIssuer, github_claims, offline_builtins_toml
from deploy.devstack.servers import free_port
from deploy.devstack.stack import Stack
from prometheus_client.parser import text_string_to_metric_families
from tests.support.bus import TestBus
from tests.support.registry import register, unique

from trustpub.registry.pool import connect

AUDIENCE = "trustpub-ops-test"


@dataclass
class Live:
    stack: Stack
    issuer: DevIssuer
    owner: str
    # The upload gate (in front of a pypiserver) and the publisher's project, when asked for.
    gate_url: str = ""
    project: str = ""

    def token(self, **claims: Any) -> str:
        """A fresh GitHub-shaped token (its own jti) that the registered publisher matches."""
        return self.issuer.token(
            github_claims(
                AUDIENCE, issuer=self.issuer.issuer, owner=self.owner, jti=str(uuid.uuid4()), **claims
            )
        )

    @property
    def mint_url(self) -> str:
        return f"{self.stack.base_url}/_/oidc/mint-token"


@contextlib.asynccontextmanager
async def live_stack(
    tmp: Path, bus: TestBus, database_url: str, env: dict[str, str] | None = None, *, gate: bool = False
) -> AsyncIterator[Live]:
    owner = unique("ops")
    project = unique("ops-pkg")
    root = await bus.lease()
    conn = await asyncio.wait_for(connect(database_url), 10)
    try:
        # No repository id: the first exchange pins it (trustpub_publishers_pinned_total).
        await register(conn, projects=[project], owner=owner, repository_id=None)
    finally:
        await conn.close()
    issuer = DevIssuer()
    with issuer.serve_in_thread():
        issuers_file = tmp / "issuers.toml"
        issuers_file.write_text(issuer.issuers_toml() + offline_builtins_toml(issuer))
        stack = Stack(
            {
                **bus.env,
                "TRUSTPUB_SUBJECT_ROOT": root,
                "TRUSTPUB_DATABASE_URL": database_url,
                "TRUSTPUB_ISSUERS_FILE": str(issuers_file),
                "TRUSTPUB_AUDIENCE": AUDIENCE,
                "TRUSTPUB_LOG_LEVEL": "warning",
                "TRUSTPUB_DRAIN_GRACE": "0.5",
                **(env or {}),
            },
            log_dir=tmp / "logs",
        )
        index = PypiServer(tmp / "index")
        try:
            await asyncio.to_thread(stack.start_all, 60)
            gate_url = ""
            if gate:
                await asyncio.to_thread(index.start)
                port = free_port()
                extra = {**index.gate_env(), "TRUSTPUB_HTTP_PORT": str(port)}
                await asyncio.to_thread(lambda: stack.start("gate", extra=extra, timeout=60))
                gate_url = f"http://127.0.0.1:{port}"
            yield Live(stack, issuer, owner, gate_url, project)
        finally:
            await asyncio.to_thread(stack.stop_all)
            index.stop()
            bus.release(root)


async def upload(session: aiohttp.ClientSession, live: Live, version: str, project: str = "") -> int:
    """Mint a token and upload a small file of ``project`` (default: the publisher's) through
    the gate; the gate's answer."""
    from tests.support.gate import basic, form, metadata  # noqa: PLC0415  (the gate's tests' own)

    async with session.post(live.mint_url, json={"token": live.token()}) as resp:
        token = (await resp.json())["token"]
    project = project or live.project
    filename = f"{project.replace('-', '_')}-{version}-py3-none-any.whl"
    data = form(metadata(project, version), filename, b"not really a wheel")
    async with session.post(
        f"{live.gate_url}/legacy/", data=data, headers={"Authorization": basic("__token__", token)}
    ) as resp:
        return resp.status


@dataclass
class Result:
    started: float  # time.monotonic()
    status: int
    code: str
    elapsed: float


async def exchange(session: aiohttp.ClientSession, url: str, token: str) -> Result:
    started = time.monotonic()
    async with session.post(url, json={"token": token}, timeout=aiohttp.ClientTimeout(total=20)) as resp:
        body = await resp.json(content_type=None)
    code = "" if resp.status == 200 else body["errors"][0]["code"]
    return Result(started, resp.status, code, time.monotonic() - started)


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` in a /metrics page whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def finite(result: list[dict[str, Any]]) -> bool:
    """Prometheus returned at least one sample that is a number (not NaN)."""
    return any(not math.isnan(float(r["value"][1])) for r in result)
