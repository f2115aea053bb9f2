"""The test suite's NATS: a pool of subject roots on one server with the generated
authorization, and connections as any identity (a service's, or the suite's own ``admin``).

The server's authorization is generated once, for every root of the pool (a root's
permissions name its subjects, streams and buckets exactly, as in production). A test leases
a root; its events stream and key-set bucket are deleted before the lease, so the test starts
from nothing, as it would with a root of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.js.errors
from nats.aio.client import Client as NatsClient

from trustpub.devstack.servers import NatsServer
from trustpub.messages import Subjects
from trustpub.messages.endpoints import SERVICES, inbox_prefix

# Enough for the session's long-lived stacks plus the test at hand, with room to spare: a
# released root goes to the back of the queue.
ROOTS = tuple(f"t{n:02d}" for n in range(32))
ADMIN = "admin"


class TestBus:
    """The session's NATS server and the pool of roots."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, server: NatsServer) -> None:
        assert server.bus is not None
        self.server = server
        self.dev = server.bus
        self.url = server.url
        # Every service of a test reads its own seed and seal keys from here.
        self.env = server.client_env()
        self._free = list(ROOTS)

    async def lease(self) -> str:
        """A root no one else uses now, emptied of what an earlier test left in JetStream."""
        root = self._free.pop(0)
        await self.reset(root)
        return root

    def lease_blocking(self) -> str:
        """:meth:`lease` for a synchronous fixture (in a thread with an event loop of its own)."""
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.lease()).result()

    def release(self, root: str) -> None:
        self._free.append(root)

    async def reset(self, root: str) -> None:
        names = Subjects(root)
        async with self.connection(ADMIN, root) as nc:
            js = nc.jetstream()
            for stream in (names.events_stream, f"KV_{names.jwks_bucket}"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await asyncio.wait_for(js.delete_stream(stream), 10)

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.dev.ca_cert))

    def seed(self, identity: str) -> str:
        if identity == ADMIN:
            return str(self.dev.admin_seed)
        assert identity in SERVICES, identity
        return str(self.dev.secrets / f"{identity}.nk")

    async def connect(self, identity: str, root: str, **options: Any) -> NatsClient:  # noqa: ANN401
        """A connection as ``identity`` (a service, or ``admin``), with its inbox prefix."""
        prefix = inbox_prefix(root, identity) if identity != ADMIN else "_INBOX.admin"
        return await asyncio.wait_for(
            nats.connect(
                self.url,
                nkeys_seed=self.seed(identity),
                tls=self.tls(),
                tls_handshake_first=True,
                inbox_prefix=prefix,
                connect_timeout=5,
                **options,
            ),
            15,
        )

    @contextlib.asynccontextmanager
    async def connection(self, identity: str, root: str, **options: Any) -> AsyncIterator[NatsClient]:  # noqa: ANN401
        nc = await self.connect(identity, root, **options)
        try:
            yield nc
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
