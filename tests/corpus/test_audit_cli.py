"""Audit of rejections: every refused exchange is recorded and ``trustpub audit list`` shows it
(issuer, provider, code, reason, a prefix of the token's hash; never the token)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from tests.corpus.cases import Ctx, post
from tests.corpus.corpus_keys import GH, Cast
from tests.support.corpus import Probe, send

from trustpub.registry import cli

pytestmark = pytest.mark.slow


async def trustpub(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


async def test_a_refused_exchange_is_listed_without_its_token(
    probe: Probe, cast: Cast, capsys: pytest.CaptureFixture[str]
) -> None:
    cs = probe.cs
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    token = Ctx(cast, attacker=cs.attacker.base_url).gh_token(aud="pypi")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        status, _, headers = await send(http, cs.base_url, post(token))
    assert status == 422
    exchange_id = headers["X-Trustpub-Exchange-Id"]
    assert await probe.audit_rows(exchange_id)
    db = ["--database-url", cs.database_url]

    code, out, _ = await trustpub(
        capsys, "audit", "list", "--refused", "--exchange", exchange_id, "--json", *db
    )
    assert code == 0
    (record,) = json.loads(out)
    assert record["kind"] == "exchange.failed"
    assert record["code"] == "invalid-token"
    assert (record["issuer"], record["provider"]) == (GH, "github")
    assert "is not this index's audience" in record["reason"]
    assert record["token_hash_prefix"] == hashlib.sha256(token.encode()).hexdigest()[:16]
    for segment in token.split("."):
        assert segment not in out

    code, out, _ = await trustpub(
        capsys, "audit", "list", "--code", "invalid-token", "--since", since, "--limit", "3", *db
    )
    assert code == 0
    lines = out.splitlines()
    assert 1 <= len(lines) <= 3
    assert all(" exchange.failed  invalid-token  " in line for line in lines)
    assert any(exchange_id in line and "issuer=" + GH in line for line in lines)


@pytest.mark.parametrize(
    "args",
    [
        ["--since", "yesterday"],
        ["--limit", "0"],
        ["--refused", "--kind", "exchange.succeeded"],
    ],
)
async def test_bad_listing_input_is_a_usage_error(
    probe: Probe, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, out, err = await trustpub(capsys, "audit", "list", *args, "--database-url", probe.cs.database_url)
    assert (code, out) == (2, "")
    assert err.startswith("trustpub: error: ")
