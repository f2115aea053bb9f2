"""The service runtime: the endpoint adapter's checks and error envelope, drain, ops
endpoints, config."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path

import aiohttp
import msgspec
import pytest
import structlog
from tests.support.bus import ADMIN, TestBus
from tests.support.services import running
from tests.support.waiting import WAIT_S, bounded, until

from trustpub.messages import DEADLINE_HEADER, InvalidPublisher, TrustpubError, Unavailable
from trustpub.messages.endpoints import MINT_STATUS, PUBLISHER_MATCH, TOKEN_KEYS, TOKEN_MINT, inbox_prefix
from trustpub.messages.v1 import ErrorReply, KeysReply, KeysRequest, MintStatus, MintStatusRequest, encode
from trustpub.runtime import CommonSettings, ConfigError, Runtime, load, serve
from trustpub.runtime.service import any_reply


def settings(common: dict[str, str]) -> CommonSettings:
    return load(CommonSettings, common)


def soon(seconds: float = 5) -> float:
    return time.time() + seconds


async def nothing(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
    pass


async def test_errors_become_error_replies_without_internals(common, bus: TestBus, subject_root):
    secret = "eyJhbGciOi.secret.token"

    async def refuse(req: KeysRequest) -> KeysReply:
        raise InvalidPublisher("valid token, but no corresponding publisher (x)")

    async def crash(req: MintStatusRequest) -> MintStatus:
        raise RuntimeError(f"boom with {secret}")

    async def minter(rt: Runtime, stack) -> None:
        rt.serve(TOKEN_KEYS, refuse)

    async def registry(rt: Runtime, stack) -> None:
        rt.serve(MINT_STATUS, crash)

    async with (
        running(Runtime("minter", settings(common)), minter),
        running(Runtime("registry", settings(common)), registry),
        running(Runtime("gateway", settings(common)), nothing) as gateway,
    ):
        with pytest.raises(InvalidPublisher, match="no corresponding publisher"):
            await gateway.call(TOKEN_KEYS, KeysRequest(), deadline=soon())
        async with bus.connection("gateway", subject_root) as nc:
            msg = await nc.request(
                MINT_STATUS.subject(subject_root), encode(MintStatusRequest(mint_id="m")), timeout=5
            )
            assert any_reply(msg.data) == ErrorReply(code="internal-error", description="internal error")
            assert secret.encode() not in msg.data
            msg = await nc.request(MINT_STATUS.subject(subject_root), b'{"type": "nonsense"}', timeout=5)
            assert any_reply(msg.data) == ErrorReply(
                code="internal-error", description="malformed request message"
            )


async def test_a_call_carries_the_exchange_id_bound_to_its_log_lines(common):
    # An HTTP request's id (the gateway's middleware) or the handled message's id travels with
    # every call made while it is bound, unless the call names one itself.
    seen: list[str] = []

    async def keys(req: KeysRequest) -> KeysReply:
        seen.append(structlog.contextvars.get_contextvars().get("exchange_id", ""))
        return KeysReply(jwks={"keys": []})

    async def minter(rt: Runtime, stack) -> None:
        rt.serve(TOKEN_KEYS, keys)

    async with (
        running(Runtime("minter", settings(common)), minter),
        running(Runtime("gateway", settings(common)), nothing) as gateway,
    ):
        with structlog.contextvars.bound_contextvars(exchange_id="a" * 32):
            await gateway.call(TOKEN_KEYS, KeysRequest(), deadline=soon())
            await gateway.call(TOKEN_KEYS, KeysRequest(), deadline=soon(), exchange_id="b" * 32)
    assert seen == ["a" * 32, "b" * 32]


async def test_request_to_nobody_is_unavailable_by_its_deadline(common):
    async with running(Runtime("gateway", settings(common)), nothing) as rt:
        started = asyncio.get_running_loop().time()
        with pytest.raises(Unavailable, match=r"no token\.keys service is running"):
            await rt.call(TOKEN_KEYS, KeysRequest(), deadline=soon(1))
        # Asked again until the deadline (a stage may be resubscribing), not on and on past it
        # (a loaded machine may stretch the last attempt by seconds, hence the slack).
        assert asyncio.get_running_loop().time() - started < 10
        with pytest.raises(Unavailable, match="deadline passed"):
            await rt.call(TOKEN_KEYS, KeysRequest(), deadline=time.time())


def test_a_service_serves_and_calls_only_what_is_declared(common):
    gateway = Runtime("gateway", settings(common))

    async def keys(req: KeysRequest) -> KeysReply:
        return KeysReply(jwks={})

    with pytest.raises(ValueError, match="served by minter, not by gateway"):
        gateway.serve(TOKEN_KEYS, keys)
    verifier = Runtime("verifier", settings(common))
    with pytest.raises(ValueError, match="verifier may not call"):
        asyncio.run(verifier.call(TOKEN_KEYS, KeysRequest(), deadline=soon()))
    # A later stage of a pipeline answers the pipeline's first caller, never its sender.
    with pytest.raises(ValueError, match="verifier may not call"):
        asyncio.run(verifier.call(PUBLISHER_MATCH, KeysRequest(), deadline=soon()))


async def test_requests_are_refused_unanswered_unless_the_reply_goes_to_an_allowed_callers_inbox(
    common, bus: TestBus, subject_root
):
    """A request naming any other reply subject would make the service publish there: it is
    dropped and counted, and the handler never runs."""
    handled: list[KeysRequest] = []

    async def keys(req: KeysRequest) -> KeysReply:
        handled.append(req)
        return KeysReply(jwks={"keys": []})

    async def setup(rt: Runtime, stack) -> None:
        rt.serve(TOKEN_KEYS, keys)

    async with (
        running(Runtime("minter", settings(common)), setup) as rt,
        bus.connection(ADMIN, subject_root) as nc,
    ):
        elsewhere = f"{inbox_prefix(subject_root, 'verifier')}.x1"
        allowed = f"{inbox_prefix(subject_root, 'gateway')}.x2"
        sub_elsewhere = await nc.subscribe(elsewhere)
        sub_allowed = await nc.subscribe(allowed)
        for reply in (elsewhere, TOKEN_MINT.subject(subject_root), allowed):
            await nc.publish(TOKEN_KEYS.subject(subject_root), encode(KeysRequest()), reply=reply)
        answer = await sub_allowed.next_msg(timeout=5)
        assert any_reply(answer.data) == KeysReply(jwks={"keys": []})
        assert rt.metrics.bus_refused.labels("token.keys", "reply-subject")._value.get() == 2
        await nc.flush()
        assert sub_elsewhere.pending_msgs == 0
        assert len(handled) == 1


async def test_a_request_past_its_deadline_is_dropped_unhandled_and_counted(
    common, bus: TestBus, subject_root
):
    # Its caller answered at the deadline: work done now would be for no one.
    handled: list[KeysRequest] = []

    async def keys(req: KeysRequest) -> KeysReply:
        handled.append(req)
        return KeysReply(jwks={})

    async def setup(rt: Runtime, stack) -> None:
        rt.serve(TOKEN_KEYS, keys)

    async with (
        running(Runtime("minter", settings(common)), setup) as minter,
        bus.connection(ADMIN, subject_root) as nc,
    ):
        inbox = inbox_prefix(subject_root, "gateway")
        sub = await nc.subscribe(f"{inbox}.>")
        subject = TOKEN_KEYS.subject(subject_root)
        late = {DEADLINE_HEADER: f"{time.time() - 1:.3f}"}
        await nc.publish(subject, encode(KeysRequest()), reply=f"{inbox}.late", headers=late)
        # A request in time behind it is answered: the late one was dropped, not answered.
        in_time = {DEADLINE_HEADER: f"{soon():.3f}"}
        await nc.publish(subject, encode(KeysRequest()), reply=f"{inbox}.in-time", headers=in_time)
        msg = await sub.next_msg(timeout=10)
        assert msg.subject == f"{inbox}.in-time"
        assert isinstance(any_reply(msg.data), KeysReply)
        assert len(handled) == 1
        expired = minter.registry.get_sample_value(
            "trustpub_requests_expired_total", {"endpoint": "token.keys"}
        )
        assert expired == 1


async def test_no_responders_is_asked_again_until_the_deadline(common):
    # A stage not subscribed yet (NATS restarted, the service restarting): the caller asks
    # again with backoff, and is answered once the stage is there.
    gateway = Runtime("gateway", settings(common))

    async def keys(req: KeysRequest) -> KeysReply:
        return KeysReply(jwks={"keys": []})

    async def setup(rt: Runtime, stack) -> None:
        rt.serve(TOKEN_KEYS, keys)

    async with running(gateway, nothing):
        call = asyncio.create_task(gateway.call(TOKEN_KEYS, KeysRequest(), deadline=soon(30)))

        def retried() -> float:
            return (
                gateway.registry.get_sample_value(
                    "trustpub_requests_retried_total", {"endpoint": "token.keys"}
                )
                or 0
            )

        def asked_again() -> bool:
            assert not call.done(), call
            return retried() >= 2

        await until(asked_again, "the call asked again twice")
        async with running(Runtime("minter", settings(common)), setup):
            reply = await bounded(call)
        assert reply.jwks == {"keys": []}
        # With nobody there until the deadline: unavailable, at the deadline.
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"no token\.keys service is running"):
            await gateway.call(TOKEN_KEYS, KeysRequest(), deadline=soon(1))
        assert time.monotonic() - started >= 0.5


async def test_drain_answers_every_request_already_in_flight(common):
    """SIGTERM's path: requests a concurrent endpoint holds still get their replies."""
    rt = Runtime("minter", settings(common))
    entered: list[KeysRequest] = []
    release = asyncio.Event()

    async def slow(req: KeysRequest) -> KeysReply:
        entered.append(req)
        await release.wait()  # in flight until the drain has begun
        return KeysReply(jwks={"ok": True})

    async def setup(rt: Runtime, stack) -> None:
        rt.serve(TOKEN_KEYS, slow, concurrency=16)

    async with running(Runtime("gateway", settings(common)), nothing) as client:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(rt, setup, stop=stop))
        await until(lambda: rt.ready, "the minter ready")
        calls = [
            asyncio.create_task(client.call(TOKEN_KEYS, KeysRequest(), deadline=soon(WAIT_S)))
            for _ in range(10)
        ]
        await until(lambda: len(entered) == 10, "every request in the handler")
        stop.set()
        await until(lambda: rt.stopping, "the drain begun")
        release.set()
        replies = await bounded(asyncio.gather(*calls))
        assert all(r.jwks == {"ok": True} for r in replies)
        await bounded(task)


async def test_ops_endpoints_report_liveness_readiness_and_metrics(common):
    rt = Runtime("minter", settings(common))
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
        assert 'trustpub_service_ready{service="minter"} 1.0' in text


async def test_readyz_answers_while_start_up_adds_checks():
    # Start-up registers checks (runtime/service.py: connect adds "nats") while the ops server
    # already answers probes: a check added during a probe must not fail that probe.
    rt = Runtime("minter", CommonSettings(ops_host="127.0.0.1", ops_port=0))
    rt.set_ready(True)

    async def late() -> bool:
        return True

    async def adds_a_check() -> bool:
        rt.checks["late"] = late
        return True

    async def adds_an_advisory() -> bool:
        rt.advisories["late"] = late
        return True

    rt.checks["first"] = adds_a_check
    rt.advisories["first"] = adds_an_advisory
    async with rt.ops_server(), aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{rt.ops_port}/readyz"
        async with http.get(url) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["checks"] == {"first": True}
        assert body["advisories"] == {"first": True}
        # The next probe runs what was added.
        async with http.get(url) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["checks"] == {"first": True, "late": True}
        assert body["advisories"] == {"first": True, "late": True}


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
