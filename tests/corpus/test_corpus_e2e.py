"""The corpus at the second level: over HTTP, through NATS and PostgreSQL, five processes.

One test per case variant (DESIGN.md, "Hostile input"). After each, the invariants of §3.1:

- V1 nothing minted: the mints table did not grow and no mint request crossed NATS;
- V2 the legitimate token of the case (same jti) still mints afterwards;
- V3 exactly one audit record of the refusal (issuer, provider, code, reason, a prefix of the
  token's hash; the token itself nowhere in it), found by the exchange id the gateway returned;
- V4 the attacker's identity provider was never asked anything;
- V5 no 5xx, an answer within 1 s (6 s where a key refresh is involved), PyPI's error shape,
  no stack trace and no token in the body.
The last test checks V6 over the whole run (every service ready, a fresh token mints, memory
growth bounded) and the key-fetch budget of V4. Positive controls (code "") must mint: the
suite cannot pass by refusing everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from typing import Any

import aiohttp
import psutil
import pytest
from deploy.devstack.stack import Stack
from tests.corpus.cases import (
    CASES,
    NE,
    OK,
    PEND,
    PUB,
    Attempt,
    Case,
    Ctx,
    R,
    T,
    case_ids,
    gl_token,
    pending_token,
    post,
)
from tests.corpus.corpus_keys import GH, LEEWAY, OFF, PROVIDER_OF, Cast
from tests.support.corpus import Probe, send

pytestmark = pytest.mark.slow

# Rows whose token names a kid the issuer's cached set lacks: the verifier asks the jwks
# service for a refresh (bounded by its own timeout).
REFRESH_PATH = {"D1", "E6a", "E6b"}
# No refusal waits on anything: generous bounds for a loaded machine, far below the deadline
# a wait would run into (the CPU cost is bounded at the direct level, test_corpus_direct.py).
FAST_S = 2.5
REFRESH_S = 6.0
# Rows answered before the exchange handler, by routing: no exchange, nothing audited.
NOT_EXCHANGES = {"A12a", "A12b", "A12c"}
# Records the registry writes beside the exchange's own (the corpus: the pending publisher's
# first publish creates the project and a reify record; a pending publisher whose project
# exists is removed, on the record).
EXTRA_AUDIT = {
    "M0": ["pending.converted", "publisher.pinned"],
    "M1": ["pending.invalidated"],
}
# Issuers a refusal's audit record may name, and their providers (the switched-off one too).
AUDITED_ISSUERS = {**PROVIDER_OF, OFF: "github"}
# The RSS growth bound of V6 (per service process, over the whole corpus).
RSS_GROWTH = 20 * 1024 * 1024


def rss(stack: Stack) -> dict[str, int]:
    return {key: psutil.Process(proc.popen.pid).memory_info().rss for key, proc in stack.procs.items()}


@pytest.fixture(scope="module")
async def warm(probe: Probe, cast: Cast) -> dict[str, Any]:
    """One exchange through every service first, then the baselines of V4 and V6."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        status, text, _ = await send(
            http, probe.cs.base_url, post(Ctx(cast, probe.cs.attacker.base_url).tok0)
        )
    assert status == 200, text
    return {
        "rss": rss(probe.cs.stack),
        "jwks_hits": {i: d.hits.get("jwks", 0) for i, d in probe.cs.idps.items()},
        "started": time.monotonic(),
    }


def _segments(token: str | None) -> list[str]:
    return [s for s in (token or "").split(".") if len(s) >= 24]


def check_error_body(case: Case, status: int, text: str, doc: Any) -> dict[str, str]:
    assert isinstance(doc, dict), text[:300]
    assert set(doc) == {"message", "errors"}, doc
    assert isinstance(doc["message"], str)
    assert isinstance(doc["errors"], list)
    assert len(doc["errors"]) == 1, doc
    (error,) = doc["errors"]
    assert set(error) == {"code", "description"}, error
    assert error["code"] == case.expect.code, f"{case.id}: HTTP {status} {error}"
    assert case.expect.fragment in error["description"], error
    assert "Traceback" not in text
    return error


async def check_audit(case: Case, probe: Probe, attempt: Attempt, exchange_id: str, status: int) -> None:
    """V3: exactly one audit record for this exchange, complete, without the token."""
    rows = await probe.audit_rows(exchange_id)
    exchange_rows = [r for r in rows if r["kind"].startswith("exchange.")]
    assert len(exchange_rows) == 1, f"{case.id}: {len(exchange_rows)} exchange records for {exchange_id}"
    (row,) = exchange_rows
    # The registry's own records of the same exchange, where the case makes some.
    others = sorted(r["kind"] for r in rows if not r["kind"].startswith("exchange."))
    succeeded = case.expect.code == OK
    # A delivered exchange's grant has its own record, written when the mint was committed.
    expected = sorted([*EXTRA_AUDIT.get(case.id, []), *(["mint.granted"] if succeeded else [])])
    assert others == expected, f"{case.id}: {others}"
    detail = row["detail"]
    assert row["kind"] == ("exchange.succeeded" if succeeded else "exchange.failed"), row
    if not succeeded:
        assert row["code"] == case.expect.code, row
        assert detail["description"], row
    # The gateway hashes the token it took from the body (none past a 413, or from an empty one).
    token = attempt.token if status != 413 else None
    expected_prefix = hashlib.sha256(token.encode()).hexdigest()[:16] if token else ""
    assert detail["token_hash_prefix"] == expected_prefix, row
    # Whose token it was is known once the verifier found a configured issuer.
    if succeeded or case.expect.code in {T, NE, PUB, R, PEND}:
        assert detail["issuer"] in AUDITED_ISSUERS, row
        assert detail["provider"] == AUDITED_ISSUERS[detail["issuer"]], row
    else:
        assert detail["issuer"] == "", row
    text = str(row)
    for segment in _segments(attempt.token):
        assert segment not in text, f"{case.id}: a token segment is in the audit row"


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
async def test_case_end_to_end(
    case: Case, probe: Probe, cast: Cast, http: aiohttp.ClientSession, warm: dict[str, Any]
) -> None:
    cs = probe.cs
    ctx = Ctx(cast, attacker=cs.attacker.base_url)
    for before in case.before(ctx) if case.before else []:
        status, text, _ = await send(http, cs.base_url, before)
        assert status == 200, text
    attempt = case.build(ctx)
    mints, mint_requests = await probe.mints(), len(probe.mint_requests)

    started = time.perf_counter()
    status, text, headers = await asyncio.wait_for(send(http, cs.base_url, attempt), 15)
    elapsed = time.perf_counter() - started

    # V5: the status, the shape, no 5xx, in time, nothing leaked.
    assert status < 500, f"{case.id}: HTTP {status}: {text[:300]}"
    assert status == case.expect.http_status, f"{case.id}: HTTP {status}: {text[:300]}"
    assert elapsed < (REFRESH_S if case.id in REFRESH_PATH else FAST_S), f"{case.id}: {elapsed:.2f} s"
    assert headers.get("Content-Type", "").startswith("application/json"), headers
    doc = json.loads(text)
    for segment in _segments(attempt.token):
        assert segment not in text, f"{case.id}: the answer echoes the token"
    if case.expect.code == OK:
        assert doc["success"] is True, doc
        assert await probe.mints() == mints + 1
    else:
        check_error_body(case, status, text, doc)
        # V1: no credential, not even asked for.
        assert await probe.mints() == mints
        assert len(probe.mint_requests) == mint_requests, f"{case.id}: a mint request crossed NATS"
    # V4: the attacker's identity provider never hears of us.
    assert cs.attacker.hits.get("any", 0) == 0, cs.attacker.hits

    exchange_id = headers.get("X-Trustpub-Exchange-Id", "")
    if case.id in NOT_EXCHANGES:
        assert not exchange_id, "a routing refusal is not an exchange"
    else:
        assert exchange_id, headers
        await check_audit(case, probe, attempt, exchange_id, status)

    if case.id == "M0":  # the pending publisher's first publish created its project
        assert (
            await probe.conn.fetchval("SELECT count(*) FROM projects WHERE normalized_name = 'new-pkg'") == 1
        )

    # V2: the legitimate token with this case's jti was not consumed by the refusal.
    if case.legit and case.expect.code != OK:
        status, text, _ = await send(http, cs.base_url, post(ctx.tok0))
        assert status == 200, f"{case.id}: the legitimate token no longer mints: {text[:300]}"


# --- rows that are more than one request --------------------------------------------------


async def test_d2_kid_flood_costs_at_most_one_key_fetch(
    probe: Probe, cast: Cast, warm: dict[str, Any]
) -> None:
    """D2: many unknown kids at once: all refused, the issuer's JWKS fetched at most once per
    cooldown, and a good token still mints meanwhile."""
    cs = probe.cs
    before = cs.idps[GH].hits.get("jwks", 0)
    ctx = Ctx(cast, attacker=cs.attacker.base_url)
    tokens = [ctx.gh_token({"alg": "RS256", "kid": uuid.uuid4().hex, "typ": "JWT"}) for _ in range(100)]
    sem = asyncio.Semaphore(20)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:

        async def one(token: str) -> tuple[int, str]:
            async with sem:
                status, text, _ = await send(http, cs.base_url, post(token))
                return status, text

        results, (good, good_text, _) = await asyncio.wait_for(
            asyncio.gather(
                asyncio.gather(*(one(t) for t in tokens)), send(http, cs.base_url, post(ctx.tok0))
            ),
            60,
        )
    assert good == 200, good_text
    assert {s for s, _ in results} == {422}
    assert all('"invalid-token"' in t for _, t in results)
    # One refresh at most: the jwks service's 60 s cooldown, shared by all of them.
    assert cs.idps[GH].hits.get("jwks", 0) - before <= 1


async def test_h2_concurrent_replay_mints_once(probe: Probe, cast: Cast, warm: dict[str, Any]) -> None:
    """H2: 50 parallel presentations of one fresh token: exactly one 200, the rest refused as
    reuse, or told to come back when judged more than a second after the grant (503 is acceptable
    by the anchor; DESIGN.md, "Exactly once, as the publisher sees it")."""
    cs = probe.cs
    token = Ctx(cast, attacker=cs.attacker.base_url).tok0
    mints = await probe.mints()
    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as http:
        results = await asyncio.wait_for(
            asyncio.gather(*(send(http, cs.base_url, post(token)) for _ in range(50))), 30
        )
    statuses = sorted(s for s, _, _ in results)
    assert statuses.count(200) == 1, statuses
    assert all(
        (s == 422 and '"invalid-reuse-token"' in t) or (s == 503 and '"unavailable"' in t)
        for s, t, _ in results
        if s != 200
    ), results
    assert await probe.mints() == mints + 1


async def test_h3_replay_inside_the_leeway_is_reuse_and_retention_outlives_it(
    probe: Probe, cast: Cast, http: aiohttp.ClientSession, warm: dict[str, Any]
) -> None:
    """H3: a token past its exp but inside the leeway mints once; its replay is reuse, because
    the token id is kept until at least exp + leeway + margin (TOB-PYPI26-1)."""
    cs = probe.cs
    ctx = Ctx(cast, attacker=cs.attacker.base_url)
    claims = ctx.gh(exp=ctx.now - LEEWAY + 5, iat=ctx.now - 300)
    token = post(ctx.gh_token(exp=claims["exp"], iat=claims["iat"]))
    status, text, _ = await send(http, cs.base_url, token)
    assert status == 200, text
    status, text, _ = await send(http, cs.base_url, token)
    assert (status, '"invalid-reuse-token"' in text) == (422, True), text
    kept_until = await probe.conn.fetchval(
        "SELECT extract(epoch FROM expires_at) FROM used_tokens WHERE issuer = $1 AND token_key = $2",
        GH,
        ctx.jti,
    )
    assert float(kept_until) >= claims["exp"] + LEEWAY + 60


async def test_h9_refusal_for_want_of_a_publisher_does_not_consume_the_token(
    probe: Probe, cast: Cast, http: aiohttp.ClientSession, warm: dict[str, Any]
) -> None:
    """H9: no publisher yet -> invalid-publisher; register one; the same token then mints."""
    from trustpub.registry import cli  # noqa: PLC0415

    cs = probe.cs
    owner = f"late-{uuid.uuid4().hex[:8]}"
    ctx = Ctx(cast, attacker=cs.attacker.base_url)
    wf = f"{owner}/demo/.github/workflows/release.yml@refs/tags/v1.0.0"
    token = post(
        ctx.gh_token(repository=f"{owner}/demo", repository_owner=owner, workflow_ref=wf, job_workflow_ref=wf)
    )
    status, text, _ = await send(http, cs.base_url, token)
    assert (status, '"invalid-publisher"' in text) == (422, True), text
    db = cs.database_url
    assert await asyncio.to_thread(cli.main, ["project", "add", f"{owner}-pkg", "--database-url", db]) == 0
    args = [
        "publisher",
        "add",
        "github",
        "--project",
        f"{owner}-pkg",
        "--owner",
        owner,
        "--owner-id",
        "1001",
        "--repository",
        "demo",
    ]
    args += ["--workflow", "release.yml", "--database-url", db]
    assert await asyncio.to_thread(cli.main, args) == 0
    status, text, _ = await send(http, cs.base_url, token)
    assert status == 200, text


async def test_h7_token_ids_are_scoped_per_issuer(probe: Probe, cast: Cast, warm: dict[str, Any]) -> None:
    """H7 (control): a GitHub and a GitLab token carrying the same jti both mint."""
    cs = probe.cs
    ctx = Ctx(cast, attacker=cs.attacker.base_url, jti="shared-jti-" + uuid.uuid4().hex)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        for token in (ctx.tok0, gl_token(ctx)):
            status, text, _ = await send(http, cs.base_url, post(token))
            assert status == 200, text


async def test_m3_first_publish_race_creates_the_project_once(
    probe: Probe, cast: Cast, warm: dict[str, Any]
) -> None:
    """M3: two pending publishers (two repositories) for one new project, exchanged at once:
    exactly one project is created; the other exchange is refused."""
    cs = probe.cs
    ctx = Ctx(cast, attacker=cs.attacker.base_url)
    tokens = [pending_token(ctx, "m3a"), pending_token(ctx, "m3b")]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        results = await asyncio.wait_for(
            asyncio.gather(*(send(http, cs.base_url, post(t)) for t in tokens)), 20
        )
    statuses = sorted(s for s, _, _ in results)
    assert statuses == [200, 422], results
    refused = next(t for s, t, _ in results if s == 422)
    assert json.loads(refused)["errors"][0]["code"] in {PEND, PUB}, refused
    assert await probe.conn.fetchval("SELECT count(*) FROM projects WHERE normalized_name = 'm3-pkg'") == 1


async def test_suite_invariants_hold_after_the_corpus(probe: Probe, cast: Cast, warm: dict[str, Any]) -> None:
    """V4 over the run (no request to the attacker, key fetches within the cooldown budget) and
    V6: every service still ready, a fresh token mints, no service grew by 20 MB or more."""
    cs = probe.cs
    assert cs.attacker.hits.get("any", 0) == 0
    minutes = (time.monotonic() - warm["started"]) / 60
    for issuer, dev in cs.idps.items():
        fetched = dev.hits.get("jwks", 0) - warm["jwks_hits"][issuer]
        assert fetched <= int(minutes) + 2, f"{issuer}: {fetched} key fetches in {minutes:.1f} min"
    for key in cs.stack.procs:
        assert cs.stack.ready(key), f"{key} is not ready"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        status, text, _ = await send(http, cs.base_url, post(Ctx(cast, cs.attacker.base_url).tok0))
    assert status == 200, text
    grown = {k: v - warm["rss"][k] for k, v in rss(cs.stack).items() if k in warm["rss"]}
    assert all(g < RSS_GROWTH for g in grown.values()), grown
