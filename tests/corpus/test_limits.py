"""Transport limits, end to end (corpus cases N1, N2 and the issue's list): a second gateway
process on the corpus stack, with low limits, so that the shared one keeps its defaults.

- per-client rate limit: 429 with Retry-After and errors[]; the first refusal of a run is
  audited, the rest counted; X-Forwarded-For only from a trusted proxy; other clients unaffected;
- a body that trickles in gets 408 at the body timeout, a head that trickles in is cut at the
  head timeout, and neither holds up anyone else;
- header lines and header counts over the limit: 431 in the error shape.
The body, token, nesting, claim-count and claim-size limits are corpus rows (A8, A10, B13, I4-I8).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import aiohttp
import pytest
from deploy.devstack.servers import free_port
from tests.corpus.cases import Ctx, body
from tests.corpus.corpus_keys import Cast
from tests.support.corpus import CorpusStack, Probe
from tests.support.waiting import WAIT_S, bounded

pytestmark = pytest.mark.slow

# One token every 5 s: a burst and the requests after it come well within that on a loaded
# machine too, so a token that refills meanwhile does not blur what the tests count.
RATE = 0.2  # requests per second
BURST = 5
# Long enough that a normal request is answered while a slow body is still awaited, however
# loaded the machine (it takes milliseconds).
BODY_TIMEOUT_S = 3
MINT = "/_/oidc/mint-token"


@pytest.fixture(scope="module")
def limited(corpus_stack: CorpusStack) -> Iterator[str]:
    """A gateway replica with low limits; 127.0.0.2 is its trusted proxy."""
    port = free_port()
    corpus_stack.stack.start(
        "gateway",
        replica="-limits",
        extra={
            "TRUSTPUB_HTTP_PORT": str(port),
            "TRUSTPUB_RATE_LIMIT": str(RATE),
            "TRUSTPUB_RATE_LIMIT_BURST": str(BURST),
            "TRUSTPUB_TRUSTED_PROXIES": "127.0.0.2",
            "TRUSTPUB_BODY_TIMEOUT": str(BODY_TIMEOUT_S),
            "TRUSTPUB_HEADER_TIMEOUT": "1",
            "TRUSTPUB_MAX_HEADER_BYTES": "2048",
            "TRUSTPUB_MAX_HEADERS": "16",
        },
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        corpus_stack.stack.stop("gateway-limits")


def session_from(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``address`` (any 127.0.0.0/8 address is local)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(address, 0), force_close=True),
        timeout=aiohttp.ClientTimeout(total=WAIT_S),
    )


async def post(http: aiohttp.ClientSession, url: str, data: bytes, **headers: str) -> tuple[int, dict, dict]:
    async with http.post(url + MINT, data=data, headers={"Content-Type": "application/json", **headers}) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


async def until_limited(
    http: aiohttp.ClientSession, url: str, **headers: str
) -> list[tuple[int, dict, dict]]:
    """Garbage requests until the first 429 (at most BURST + 3)."""
    answers = []
    for _ in range(BURST + 3):
        answers.append(await post(http, url, b'{"token":"a.b.c"}', **headers))
        if answers[-1][0] == 429:
            break
    return answers


async def test_n1_rate_limit_answers_429_with_retry_after_and_audits_once(
    limited: str, probe: Probe, cast: Cast
) -> None:
    async with session_from("127.0.0.5") as http:
        answers = await until_limited(http, limited)
        statuses = [s for s, _, _ in answers]
        assert statuses == [422] * BURST + [429], statuses
        status, doc, headers = answers[-1]
        assert doc["message"] == "Too Many Requests"
        (error,) = doc["errors"]
        assert error["code"] == "rate-limited"
        assert f"{RATE:g} requests per second" in error["description"]
        assert 1 <= int(headers["Retry-After"]) <= 1 / RATE
        first = headers["X-Trustpub-Exchange-Id"]
        again = [await post(http, limited, b'{"token":"a.b.c"}') for _ in range(3)]
        assert [s for s, _, _ in again] == [429] * 3
        # Another client is not held up by this one.
        async with session_from("127.0.0.6") as other:
            token = Ctx(cast, attacker=probe.cs.attacker.base_url).tok0
            status, doc, _ = await post(other, limited, body(token))
            assert status == 200, doc
        # The bucket refills: after Retry-After the client is served again.
        await asyncio.sleep(int(headers["Retry-After"]))
        status, doc, _ = await post(http, limited, b'{"token":"a.b.c"}')
        assert status == 422, doc
    # One audit record for the run of refusals, none for the repeats.
    (row,) = await probe.audit_rows(first)
    assert (row["kind"], row["code"]) == ("exchange.failed", "rate-limited")
    assert "127.0.0.5" in row["detail"]["description"]
    for _, _, h in again:
        assert await probe.audit_rows(h["X-Trustpub-Exchange-Id"], wait=0.3) == []


async def test_forwarded_for_is_ignored_from_a_peer_that_is_no_trusted_proxy(limited: str) -> None:
    async with session_from("127.0.0.7") as http:
        statuses = []
        for _ in range(BURST + 1):
            status, _, _ = await post(
                http, limited, b'{"token":"a.b.c"}', **{"X-Forwarded-For": f"198.51.100.{len(statuses)}"}
            )
            statuses.append(status)
    assert statuses == [422] * BURST + [429], statuses


async def test_forwarded_for_names_the_client_behind_a_trusted_proxy(limited: str) -> None:
    async with session_from("127.0.0.2") as proxy:
        answers = await until_limited(proxy, limited, **{"X-Forwarded-For": "203.0.113.7"})
        assert [s for s, _, _ in answers] == [422] * BURST + [429]
        # A client that prepends an address of its choice is still itself (the rightmost
        # untrusted entry counts, the one the proxy appended).
        status, _, _ = await post(
            proxy, limited, b'{"token":"a.b.c"}', **{"X-Forwarded-For": "203.0.113.9, 203.0.113.7"}
        )
        assert status == 429
        # Another client behind the same proxy has a bucket of its own.
        status, _, _ = await post(proxy, limited, b'{"token":"a.b.c"}', **{"X-Forwarded-For": "203.0.113.8"})
        assert status == 422


async def test_introspection_is_not_rate_limited(limited: str) -> None:
    async with session_from("127.0.0.8") as http:
        for _ in range(BURST + 2):
            async with http.post(limited + "/_/oidc/introspect", data=b'{"token":"x"}') as resp:
                assert resp.status != 429


async def _raw(port: int, head: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await bounded(asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.9", 0)))
    writer.write(head)
    await writer.drain()
    return reader, writer


async def test_n2_slow_body_gets_408_without_holding_up_others(
    limited: str, probe: Probe, cast: Cast
) -> None:
    port = int(limited.rsplit(":", 1)[1])
    payload = body(Ctx(cast, attacker=probe.cs.attacker.base_url).tok0)
    head = (
        f"POST {MINT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    reader, writer = await _raw(port, head)
    started = time.monotonic()
    every = 0.2  # a byte every 200 ms: the whole body would take minutes

    async def trickle() -> None:
        for byte in payload:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every)

    dripping = asyncio.create_task(trickle())
    slow_answer = asyncio.create_task(reader.read(1))
    try:
        # Meanwhile a normal client is served, while the slow one still waits for its answer.
        async with session_from("127.0.0.10") as http:
            status, doc, _ = await post(http, limited, b'{"token":"a.b.c"}')
        assert status == 422, doc
        assert not slow_answer.done()
        first = await bounded(slow_answer)
        answered = time.monotonic() - started
        # The connection is closed after the answer (and at most limits.LINGER_S of draining).
        answer = first + await bounded(reader.read())
        closed = time.monotonic() - started
    finally:
        dripping.cancel()
        writer.close()
    # Cut at the body timeout, long before the body would have come in (no tighter bound: a
    # loaded machine stretches any duration).
    trickling = len(payload) * every
    assert 0.9 * BODY_TIMEOUT_S < answered < trickling / 2, answered
    assert closed < trickling / 2, closed
    head_text, _, body_text = answer.decode().partition("\r\n\r\n")
    assert head_text.startswith("HTTP/1.1 408"), head_text
    doc = json.loads(body_text)
    assert doc["errors"][0]["code"] == "invalid-payload"
    assert f"not received within {BODY_TIMEOUT_S} s" in doc["errors"][0]["description"]
    exchange_id = next(
        line.split(":", 1)[1].strip()
        for line in head_text.splitlines()
        if line.lower().startswith("x-trustpub-exchange-id")
    )
    (row,) = await probe.audit_rows(exchange_id)
    assert row["code"] == "invalid-payload"


async def test_slow_request_head_is_cut_at_the_head_timeout(limited: str) -> None:
    """Slowloris: a head that never ends holds a connection for the head timeout, not an hour."""
    port = int(limited.rsplit(":", 1)[1])
    reader, writer = await _raw(port, f"POST {MINT} HTTP/1.1\r\nHost: x\r\n".encode())
    started = time.monotonic()

    lines, every = 600, 0.1  # a header line every 100 ms for a minute

    async def trickle() -> None:
        for _ in range(lines):
            writer.write(b"X-Slow: a\r\n")
            await writer.drain()
            await asyncio.sleep(every)

    dripping = asyncio.create_task(trickle())
    try:
        rest = await bounded(reader.read())
    except ConnectionResetError:
        rest = b""
    finally:
        dripping.cancel()
        writer.close()
    elapsed = time.monotonic() - started
    assert rest == b"", rest[:200]  # closed without an answer: the request never began
    # Cut at the head timeout (1 s), long before the head would have ended (no tighter bound:
    # a loaded machine stretches any duration).
    assert elapsed < lines * every / 4, elapsed


@pytest.mark.parametrize(
    ("headers", "what"),
    [
        ({"X-Big": "a" * 3000}, "a header line over 2048 bytes"),
        ({f"X-Many-{i}": "1" for i in range(20)}, "more than 16 headers"),
    ],
)
async def test_oversized_request_heads_get_431_in_the_error_shape(
    limited: str, headers: dict, what: str
) -> None:
    async with (
        session_from("127.0.0.11") as http,
        http.post(limited + MINT, data=b"{}", headers=headers) as resp,
    ):
        assert resp.status == 431, what
        doc = await resp.json(content_type=None)
    assert set(doc) == {"message", "errors"}
    assert doc["errors"][0]["code"] == "invalid-request"
    assert "request headers are too large" in doc["errors"][0]["description"]


async def test_garbage_instead_of_http_gets_400_in_the_error_shape(limited: str) -> None:
    port = int(limited.rsplit(":", 1)[1])
    reader, writer = await _raw(port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    try:
        answer = await bounded(reader.read())
    finally:
        writer.close()
    head_text, _, body_text = answer.decode("utf-8", "replace").partition("\r\n\r\n")
    assert head_text.startswith("HTTP/1."), head_text
    assert " 400 " in head_text.splitlines()[0], head_text
    assert json.loads(body_text)["errors"][0]["code"] == "invalid-request"
