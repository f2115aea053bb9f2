"""The service runtime: the endpoint adapter's error envelope, drain, ops endpoints, config."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import aiohttp
import msgspec
import nats
import pytest
from tests.conftest import running

from trustpub.messages import InvalidPublisher, TrustpubError, Unavailable
from trustpub.messages.v1 import ErrorReply, KeysReply, KeysRequest, VerifyRequest, encode
from trustpub.runtime import CommonSettings, ConfigError, Runtime, load, serve
from trustpub.runtime.service import any_reply


def settings(common: dict[str, str]) -> CommonSettings:
    return load(CommonSettings, common)


async def test_errors_become_error_replies_without_internals(common):
    rt = Runtime("probe", settings(common))
    secret = "eyJhbGciOi.secret.token"

    async def refuse(req: VerifyRequest) -> KeysReply:
        raise InvalidPublisher("valid token, but no corresponding publisher (x)")

    async def crash(req: VerifyRequest) -> KeysReply:
        raise RuntimeError(f"boom with {secret}")

    async def setup(rt: Runtime, stack) -> None:
        rt.endpoint(f"{rt.subjects.root}.probe.refuse", VerifyRequest, refuse)
        rt.endpoint(f"{rt.subjects.root}.probe.crash", VerifyRequest, crash)

    async with running(rt, setup):
        nc = await nats.connect(common["TRUSTPUB_NATS_URL"])
        try:
            msg = await nc.request(
                f"{rt.subjects.root}.probe.refuse", encode(VerifyRequest(token="t")), timeout=5
            )
            assert any_reply(msg.data) == ErrorReply(
                code="invalid-publisher", description="valid token, but no corresponding publisher (x)"
            )
            msg = await nc.request(
                f"{rt.subjects.root}.probe.crash", encode(VerifyRequest(token="t")), timeout=5
            )
            assert any_reply(msg.data) == ErrorReply(code="internal-error", description="internal error")
            assert secret.encode() not in msg.data
            msg = await nc.request(f"{rt.subjects.root}.probe.crash", b'{"type": "nonsense"}', timeout=5)
            assert any_reply(msg.data).code == "internal-error"
        finally:
            await nc.close()
        with pytest.raises(InvalidPublisher, match="no corresponding publisher"):
            await rt.request(
                f"{rt.subjects.root}.probe.refuse", VerifyRequest(token="t"), KeysReply, timeout=5
            )


async def test_request_to_nobody_is_unavailable_at_once(common):
    rt = Runtime("probe", settings(common))

    async def setup(rt: Runtime, stack) -> None:
        pass

    async with running(rt, setup):
        started = asyncio.get_running_loop().time()
        with pytest.raises(Unavailable, match=r"no token\.keys service is running"):
            await rt.request(rt.subjects.token_keys, KeysRequest(), KeysReply, timeout=3)
        assert asyncio.get_running_loop().time() - started < 1
        with pytest.raises(Unavailable, match="deadline passed"):
            await rt.request(rt.subjects.token_keys, KeysRequest(), KeysReply, timeout=0)


async def test_drain_answers_every_request_already_in_flight(common):
    """SIGTERM's path: requests a concurrent endpoint holds still get their replies."""
    rt = Runtime("probe", settings(common))
    started = asyncio.Event()

    async def slow(req: KeysRequest) -> KeysReply:
        started.set()
        await asyncio.sleep(0.5)
        return KeysReply(jwks={"ok": True})

    async def setup(rt: Runtime, stack) -> None:
        rt.endpoint(rt.subjects.token_keys, KeysRequest, slow, concurrency=16)

    async def nothing(rt: Runtime, stack) -> None:
        pass

    client = Runtime("client", settings(common))
    async with running(client, nothing):
        stop = asyncio.Event()
        task = asyncio.create_task(serve(rt, setup, stop=stop))
        while not rt.ready:  # noqa: ASYNC110  (the runtime exposes readiness as a flag)
            await asyncio.sleep(0.01)
        calls = [
            asyncio.create_task(client.request(rt.subjects.token_keys, KeysRequest(), KeysReply, timeout=5))
            for _ in range(10)
        ]
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.sleep(0.05)
        stop.set()
        replies = await asyncio.wait_for(asyncio.gather(*calls), 10)
        assert all(r.jwks == {"ok": True} for r in replies)
        await asyncio.wait_for(task, 10)


async def test_ops_endpoints_report_liveness_readiness_and_metrics(common):
    rt = Runtime("probe", settings(common))
    healthy = {"value": True}

    async def check() -> bool:
        return healthy["value"]

    async def setup(rt: Runtime, stack) -> None:
        rt.checks["database"] = check

    async with running(rt, setup), aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{rt.ops_port}"
        async with http.get(f"{base}/livez") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["checks"] == {"nats": True, "database": True}
        healthy["value"] = False
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["checks"]["database"] is False
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
        assert 'trustpub_service_ready{service="probe"} 1.0' in text


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sample(CommonSettings):
    timeout: float = 5.0
    enabled: bool = True
    path: Path | None = None
    names: tuple[str, ...] = ()
    required: str


def test_settings_parse_from_the_environment_with_clear_errors():
    s = load(
        Sample,
        {
            "TRUSTPUB_REQUIRED": "x",
            "TRUSTPUB_TIMEOUT": "2.5",
            "TRUSTPUB_ENABLED": "off",
            "TRUSTPUB_PATH": "/srv/x",
            "TRUSTPUB_NAMES": "a, b,",
        },
    )
    assert (s.timeout, s.enabled, s.path, s.names) == (2.5, False, Path("/srv/x"), ("a", "b"))
    with pytest.raises(ConfigError, match="TRUSTPUB_REQUIRED is required"):
        load(Sample, {})
    with pytest.raises(ConfigError, match="TRUSTPUB_TIMEOUT must be a number, got 'soon'"):
        load(Sample, {"TRUSTPUB_REQUIRED": "x", "TRUSTPUB_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match="TRUSTPUB_ENABLED must be true or false"):
        load(Sample, {"TRUSTPUB_REQUIRED": "x", "TRUSTPUB_ENABLED": "maybe"})


def test_error_codes_round_trip_through_replies():
    for cls in TrustpubError.__subclasses__():
        err = TrustpubError.from_code(cls.code.value, "d")
        assert type(err) is cls
    assert TrustpubError.from_code("nope", "d").code.value == "internal-error"
    assert msgspec.json.decode(encode(ErrorReply(code="a", description="b")))["type"] == "trustpub.v1.error"
