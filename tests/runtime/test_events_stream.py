"""The events stream against the suite's NATS: created bounded by age, bytes and messages with
discard-old; a stream of an older version (bounded by age only) given the bounds by a consumer
and by no one else; its usage and bounds exported by the watch (docs/metrics.md, "The events
stream")."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import nats.errors
import pytest
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from tests.support.bus import ADMIN, TestBus
from tests.support.services import running

from trustpub.messages import Subjects
from trustpub.messages.authorization import may_update_events_stream, permissions
from trustpub.runtime import CommonSettings, ConfigError, Runtime, load
from trustpub.runtime.events import DUPLICATE_WINDOW_S, EVENTS_MAX_AGE_S, StreamBounds, ensure_stream
from trustpub.runtime.streamwatch import EventStreamWatch, watch_event_stream, with_event_stream_watch

BOUNDS = StreamBounds(max_bytes=4 * 1024 * 1024, max_msgs=5)


async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


async def old_stream(bus: TestBus, root: str) -> None:
    """The stream as versions before the byte and message bounds created it."""
    names = Subjects(root)
    async with bus.connection(ADMIN, root) as nc:
        await nc.jetstream().add_stream(
            StreamConfig(
                name=names.events_stream,
                subjects=[names.events_wildcard],
                storage=StorageType.FILE,
                max_age=EVENTS_MAX_AGE_S,
                duplicate_window=DUPLICATE_WINDOW_S,
            )
        )


async def publish(bus: TestBus, root: str, count: int) -> None:
    async with bus.connection(ADMIN, root) as nc:
        js = nc.jetstream()
        for n in range(count):
            await js.publish(f"{root}.events.jwks.rotated", b"{}", headers={"Nats-Msg-Id": f"e{n}"})


def test_only_the_consumers_of_events_may_update_the_stream():
    stream = Subjects("trustpub").events_stream
    update = f"$JS.API.STREAM.UPDATE.{stream}"
    for service in ("gateway", "jwks", "verifier", "registry", "minter"):
        allowed = update in permissions(service, ("trustpub",)).publish
        assert allowed == may_update_events_stream(service) == (service == "registry"), service


def test_the_bounds_are_settings():
    defaults = StreamBounds.of(CommonSettings())
    assert (defaults.max_bytes, defaults.max_msgs, defaults.max_age_s) == (
        256 * 1024 * 1024,
        1_000_000,
        EVENTS_MAX_AGE_S,
    )
    env = {"TRUSTPUB_EVENTS_MAX_BYTES": "1048576", "TRUSTPUB_EVENTS_MAX_MSGS": "10"}
    assert StreamBounds.of(load(CommonSettings, env)) == StreamBounds(max_bytes=1048576, max_msgs=10)
    with pytest.raises(ConfigError, match="TRUSTPUB_EVENTS_MAX_MSGS must be at least 1, got 0"):
        StreamBounds.of(load(CommonSettings, {"TRUSTPUB_EVENTS_MAX_MSGS": "0"}))
    with pytest.raises(ConfigError, match="TRUSTPUB_EVENTS_MAX_BYTES must be a whole number"):
        load(CommonSettings, {"TRUSTPUB_EVENTS_MAX_BYTES": "1GiB"})


async def test_a_new_stream_is_bounded_and_discards_the_oldest(bus: TestBus, subject_root):
    names = Subjects(subject_root)
    async with bus.connection("gateway", subject_root) as nc:
        info = await asyncio.wait_for(ensure_stream(nc.jetstream(), names, BOUNDS), 10)
    config = info.config
    assert (config.max_bytes, config.max_msgs, config.max_age) == (BOUNDS.max_bytes, 5, EVENTS_MAX_AGE_S)
    assert config.discard == DiscardPolicy.OLD
    assert config.subjects == [names.events_wildcard]
    # Past the bound, publishing goes on and the oldest events go.
    await publish(bus, subject_root, 8)
    async with bus.connection(ADMIN, subject_root) as nc:
        state = (await nc.jetstream().stream_info(names.events_stream)).state
    assert (state.messages, state.first_seq, state.last_seq) == (5, 4, 8)


async def test_an_older_stream_gets_the_bounds_from_a_consumer_only(bus: TestBus, subject_root):
    names = Subjects(subject_root)
    await old_stream(bus, subject_root)
    await publish(bus, subject_root, 3)
    async with bus.connection("gateway", subject_root) as nc:
        js = nc.jetstream(timeout=2)
        # A publisher leaves an existing stream as it is ...
        info = await asyncio.wait_for(ensure_stream(js, names, BOUNDS), 10)
        assert (info.config.max_bytes, info.config.max_msgs) == (-1, -1)
        # ... and NATS would not let it change it.
        with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
            await js.update_stream(info.config.evolve(max_msgs=1))
    async with bus.connection("registry", subject_root) as nc:
        info = await asyncio.wait_for(ensure_stream(nc.jetstream(), names, BOUNDS, update=True), 10)
    config = info.config
    assert (config.max_bytes, config.max_msgs, config.max_age) == (BOUNDS.max_bytes, 5, EVENTS_MAX_AGE_S)
    assert config.discard == DiscardPolicy.OLD
    assert (config.subjects, config.storage) == ([names.events_wildcard], StorageType.FILE)
    assert info.state.messages == 3  # what it held stays
    # Once it has them, no update is sent: even a service that may not update gets through.
    async with bus.connection("gateway", subject_root) as nc:
        again = await asyncio.wait_for(ensure_stream(nc.jetstream(timeout=2), names, BOUNDS, update=True), 10)
    assert again.config.max_msgs == 5


async def test_the_watch_bounds_an_older_stream_and_exports_its_usage(common, bus: TestBus, subject_root):
    await old_stream(bus, subject_root)
    env = {**common, "TRUSTPUB_EVENTS_MAX_BYTES": str(BOUNDS.max_bytes), "TRUSTPUB_EVENTS_MAX_MSGS": "5"}
    watches: list[EventStreamWatch] = []

    async def setup(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
        watches.append(watch_event_stream(rt, interval=0.05))

    rt = Runtime("registry", load(CommonSettings, env))

    def gauge(name: str) -> float | None:
        return rt.registry.get_sample_value(f"trustpub_events_stream_{name}")

    # As python -m trustpub.registry runs it; a setup that watches already keeps its one watch.
    async with running(rt, with_event_stream_watch(setup)):
        assert watch_event_stream(rt) is watches[0]
        await until(lambda: gauge("max_messages") == 5, "the watch bounds the stream")
        assert gauge("max_bytes") == BOUNDS.max_bytes
        assert gauge("max_age_seconds") == EVENTS_MAX_AGE_S
        assert (gauge("messages"), gauge("bytes")) == (0, 0)
        await publish(bus, subject_root, 7)
        await until(lambda: gauge("messages") == 5, "the watch sees the stream at its bound")
        assert (gauge("bytes") or 0) > 0
        async with bus.connection(ADMIN, subject_root) as nc:
            config = (await nc.jetstream().stream_info(Subjects(subject_root).events_stream)).config
        assert (config.max_msgs, config.discard) == (5, DiscardPolicy.OLD)
    assert watches[0].update


async def test_a_publisher_watch_exports_without_updating(common, bus: TestBus, subject_root):
    await old_stream(bus, subject_root)
    rt = Runtime("gateway", load(CommonSettings, common))

    async def setup(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
        watch_event_stream(rt, interval=0.05)

    async with running(rt, setup):
        await until(
            lambda: rt.registry.get_sample_value("trustpub_events_stream_max_messages") == -1,
            "the gateway's watch exports the stream's bounds as they are",
        )


async def test_bounds_nats_cannot_reserve_leave_the_stream_as_it_is_and_exported(
    common, bus: TestBus, subject_root
):
    await old_stream(bus, subject_root)
    await publish(bus, subject_root, 2)
    # More bytes than the server has: NATS refuses to reserve them.
    env = {**common, "TRUSTPUB_EVENTS_MAX_BYTES": str(10**15)}
    rt = Runtime("registry", load(CommonSettings, env))
    watches: list[EventStreamWatch] = []

    async def setup(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
        watches.append(watch_event_stream(rt, interval=0.05))

    async with running(rt, setup):
        await until(lambda: bool(watches) and watches[0].refused, "NATS refuses the bounds")
        await until(
            lambda: rt.registry.get_sample_value("trustpub_events_stream_messages") == 2,
            "the watch exports the stream as it is",
        )
        assert rt.registry.get_sample_value("trustpub_events_stream_max_bytes") == -1
