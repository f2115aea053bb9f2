"""What the upload gate's end-to-end tests share: a real index (pypiserver) behind gates of the
e2e stack, files to upload, uploads with a plain HTTP client, and the database's records."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from deploy.devstack.index import DevCertificate, PypiServer
from deploy.devstack.publish_demo import write_wheel
from deploy.devstack.servers import free_port
from deploy.devstack.stack import Stack

UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
TWINE = shutil.which("twine", path=str(Path(sys.executable).parent))


@dataclass
class GateUnderTest:
    """A gate process of the e2e stack, in front of ``index``."""

    key: str
    url: str
    index: PypiServer
    tls: DevCertificate

    @property
    def upload_url(self) -> str:
        return f"{self.url}/legacy/"

    def client_tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.tls.ca))


def start_gate(stack: Stack, index: PypiServer, tls: DevCertificate, key: str, **extra: str) -> GateUnderTest:
    """Start a gate of ``stack`` (``key``: "" for the first, a suffix for another one)."""
    port = free_port()
    env = {
        **index.gate_env(),
        "TRUSTPUB_HTTP_PORT": str(port),
        "TRUSTPUB_TLS_CERT": str(tls.cert),
        "TRUSTPUB_TLS_KEY": str(tls.key),
        "TRUSTPUB_INDEX_TIMEOUT": "10",
        **extra,
    }
    stack.start("gate", replica=key, extra=env)
    return GateUnderTest(f"gate{key}", f"https://127.0.0.1:{port}", index, tls)


def wheel(directory: Path, project: str, version: str = "0.0.1", payload: bytes = b"") -> Path:
    """A small valid wheel of ``project``."""
    return write_wheel(directory, project, version, b"VALUE = 1\n" + payload)


def metadata(project: str, version: str) -> list[tuple[str, str]]:
    """The form fields twine and uv send before the file."""
    return [
        (":action", "file_upload"),
        ("protocol_version", "1"),
        ("metadata_version", "2.1"),
        ("name", project),
        ("version", version),
        ("filetype", "bdist_wheel"),
        ("pyversion", "py3"),
    ]


def form(fields: list[tuple[str, str]], filename: str, content: Any) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, value in fields:
        data.add_field(name, value)
    if hasattr(content, "__aiter__"):  # streamed: sent chunked, no Content-Length
        content = aiohttp.payload.AsyncIterablePayload(content)
    data.add_field("content", content, filename=filename, content_type="application/octet-stream")
    return data


async def post(
    gate: GateUnderTest, token: str, data: Any, *, user: str = "__token__", timeout: float = 120
) -> tuple[int, str, str]:
    """Upload as a client does: (status, reason, body)."""
    auth = {"Authorization": basic(user, token)}
    connector = aiohttp.TCPConnector(ssl=gate.client_tls())
    async with (
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as http,
        http.post(gate.upload_url, data=data, headers=auth) as resp,
    ):
        return resp.status, resp.reason or "", await resp.text()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def random_chunks(size: int, digest: Any, chunk: int = 1 << 16) -> AsyncIterator[bytes]:
    """``size`` random bytes, fed to ``digest`` on the way (the client's side of a big upload)."""
    sent = 0
    while sent < size:
        block = os.urandom(min(chunk, size - sent))
        digest.update(block)
        sent += len(block)
        yield block
        await asyncio.sleep(0)


async def records(database_url: str, project: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        rows = await conn.fetch("SELECT * FROM uploads WHERE project = $1 ORDER BY uploaded_at", project)
    finally:
        await conn.close()
    return [{**dict(r), "provenance": json.loads(r["provenance"])} for r in rows]


async def audit_rows(database_url: str, kind: str, mint_id: str | None = None) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT kind, code, outcome, mint_id::text AS mint_id, detail::text AS detail FROM audit_events "
            "WHERE kind = $1 AND ($2::text IS NULL OR mint_id::text = $2) ORDER BY id",
            kind,
            mint_id,
        )
    finally:
        await conn.close()
    return [dict(r) for r in rows]


def stored(index: PypiServer, project: str) -> list[str]:
    """The files of ``project`` the index holds."""
    prefix = project.replace("-", "_") + "-"
    return [f for f in index.files() if f.startswith(prefix)]


def buffer(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)
