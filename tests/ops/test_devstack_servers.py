"""The development servers' own plumbing, which every stack in the suite stands on: the ports
it hands out and the connections its readiness probe leaves behind."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import warnings
from pathlib import Path

import nats.errors
import pytest
from deploy.devstack import servers
from deploy.devstack.bus import DevBus
from deploy.devstack.servers import ephemeral_range, free_port, joined
from tests.support.bus import TestBus


def test_free_ports_lie_outside_the_range_outgoing_connections_take_theirs_from() -> None:
    # CI: a stack's gateway was given a port that one of the services' own outgoing
    # connections took before the gateway bound it ("address already in use").
    low, high = ephemeral_range()
    picked = [free_port() for _ in range(200)]
    assert len(set(picked)) == len(picked), "a port handed out twice"
    assert not [p for p in picked if low <= p <= high]
    for port in picked[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free when handed out


def test_outgoing_connections_take_their_ports_from_the_range_read() -> None:
    """The premise of the above on this machine: the range read is the one the kernel uses."""
    low, high = ephemeral_range()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        try:
            local = [c.getsockname()[1] for c in clients]
        finally:
            for c in clients:
                c.close()
    assert all(low <= p <= high for p in local), (low, high, local)


def test_without_room_outside_the_range_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "ephemeral_range", lambda: (1024, 65535))
    servers._outside_ephemeral.cache_clear()
    try:
        port = free_port()
    finally:
        monkeypatch.undo()
        servers._outside_ephemeral.cache_clear()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


async def test_a_probe_that_fails_closes_the_connection_it_opened(tmp_path: Path) -> None:
    """A server that finishes the TLS handshake and then says nothing (a nats-server still
    starting, starved of CPU): the probe gives up, and closes what it opened, rather than
    leaving an open TLS connection for the garbage collector to warn about in a later test."""
    bus = DevBus(tmp_path / "bus").ensure()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(bus.server_cert, bus.server_key)
    accepted: list[asyncio.Event] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        gone = asyncio.Event()
        accepted.append(gone)
        with contextlib.suppress(OSError, ssl.SSLError):
            while await reader.read(4096):
                pass  # the client's CONNECT never comes before INFO; anything else is ignored
        gone.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises((TimeoutError, OSError, nats.errors.Error)):
            await servers._probe(f"nats://127.0.0.1:{port}", bus, 0.5)
        assert accepted, "the probe never connected"
        # A bound on a condition: the client's close reaches the server at once, and only
        # the garbage collector would ever close a connection the probe left open.
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in accepted)), 30)
    finally:
        server.close()
        await server.wait_closed()


def test_a_client_the_server_refuses_leaves_no_connection_open(bus: TestBus) -> None:
    """CI: a test asserted a refusal and ended its event loop at once (test_k8s.py); nats-py
    had not closed the refused connection, and the garbage collector's ResourceWarning
    failed the next test. Every refusal the suite provokes goes through :func:`joined`.
    Whether the server's own close arrives before the loop ends is a race (a few in a
    hundred here), hence the many attempts."""

    async def quiet(_exc: Exception) -> None:
        pass  # the refusal is asserted below, not logged three hundred times

    async def refused() -> None:
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
            async with joined(bus.url, 5, tls=bus.tls(), tls_handshake_first=True, error_cb=quiet):
                pass

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(300):
            asyncio.run(refused())
        gc.collect()
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
