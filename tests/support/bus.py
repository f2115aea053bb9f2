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
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from deploy.devstack.servers import NatsServer
from nats.aio.client import Client as NatsClient
from tests.support.services import running

from trustpub.messages import DEADLINE_HEADER, EXCHANGE_ID_HEADER, Subjects, TrustpubError, Unavailable
from trustpub.messages.endpoints import (
    BUCKETS,
    PUBLISHER_MATCH,
    SERVICES,
    TOKEN_VERIFY,
    Endpoint,
    inbox_prefix,
)
from trustpub.messages.v1 import ErrorReply, MatchRequest, MintedToken, VerifiedToken, VerifyRequest, encode
from trustpub.runtime import CommonSettings, Runtime, load
from trustpub.runtime.seal import SEAL_HEADER

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
            for stream in (names.events_stream, *(f"KV_{names.bucket(b.suffix)}" for b in BUCKETS)):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await asyncio.wait_for(js.delete_stream(stream), 10)

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.dev.ca_cert))

    def seed(self, identity: str) -> str:
        if identity == ADMIN:
            return str(self.dev.admin_seed)
        assert identity in SERVICES, identity
        return str(self.dev.secrets / f"{identity}.nk")

    async def connect(self, identity: str, root: str, *, inbox_of: str = "", **options: Any) -> NatsClient:
        """A connection as ``identity`` (a service, or ``admin``), with its inbox prefix (or,
        for ``admin`` only, the inbox prefix of service ``inbox_of``)."""
        assert not inbox_of or identity == ADMIN
        owner = inbox_of or identity
        prefix = inbox_prefix(root, owner) if owner != ADMIN else "_INBOX.admin"
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
    async def connection(
        self, identity: str, root: str, *, inbox_of: str = "", **options: Any
    ) -> AsyncIterator[NatsClient]:
        nc = await self.connect(identity, root, inbox_of=inbox_of, **options)
        try:
            yield nc
        finally:
            with contextlib.suppress(Exception):
                await nc.close()


async def hand_over(
    sender: Runtime,
    endpoint: Endpoint[Any, Any],
    message: msgspec.Struct,
    *,
    answer_to: Runtime,
    exchange_id: str = "",
    timeout: float = 5.0,
) -> Any:
    """What a stage of the pipeline does, for a test that plays it: ``sender`` hands
    ``message`` to ``endpoint``, sealed when declared so, with the reply going to
    ``answer_to``'s inbox (the pipeline's first caller). Returns the answer, or raises the
    error it carries; :class:`Unavailable` when none comes."""
    subject = endpoint.subject(sender.subjects.root)
    data = encode(message)
    deadline = f"{time.time() + timeout:.3f}"
    inbox = answer_to.nc.new_inbox()
    headers = {DEADLINE_HEADER: deadline, EXCHANGE_ID_HEADER: exchange_id}
    if endpoint.sealed:
        headers[SEAL_HEADER] = sender.seals.seal_message(
            endpoint.server,
            subject=subject,
            reply=inbox,
            exchange_id=exchange_id,
            deadline=deadline,
            data=data,
        )
    sub = await answer_to.nc.subscribe(inbox, max_msgs=1)
    try:
        await answer_to.nc.flush()
        await sender.nc.publish(subject, data, reply=inbox, headers=headers)
        try:
            msg = await sub.next_msg(timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            raise Unavailable(f"{endpoint.label} did not answer within {timeout} s") from None
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    union: Any = endpoint.reply | ErrorReply
    reply = msgspec.json.decode(msg.data, type=union)
    if isinstance(reply, ErrorReply):
        raise TrustpubError.from_code(reply.code, reply.description, reply.context)
    return reply


@dataclass
class Pipeline:
    """The gateway that asks the verifier, and a registry that keeps what the verifier handed
    it (sealed: the registry's adapter checks) instead of matching it."""

    gateway: Runtime
    verified: dict[str, VerifiedToken] = field(default_factory=dict)

    async def verify(self, token: str) -> VerifiedToken | ErrorReply:
        """What the verifier made of ``token``: the verified token it handed on, or its refusal."""
        exchange_id = uuid.uuid4().hex
        try:
            await self.gateway.call(
                TOKEN_VERIFY, VerifyRequest(token=token), deadline=time.time() + 5, exchange_id=exchange_id
            )
        except TrustpubError as exc:
            return ErrorReply(code=exc.code.value, description=exc.description, context=exc.context)
        return self.verified.pop(exchange_id)


async def _nothing(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
    pass


@contextlib.asynccontextmanager
async def verification_pipeline(common: dict[str, str]) -> AsyncIterator[Pipeline]:
    """A :class:`Pipeline` around whatever verifier runs on ``common``'s root."""
    settings = load(CommonSettings, common)
    verified: dict[str, VerifiedToken] = {}

    async def match(req: MatchRequest) -> MintedToken:
        verified[req.exchange_id] = req.token
        return MintedToken(token="minted", expires=0)

    async def registry(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
        rt.serve(PUBLISHER_MATCH, match)

    async with (
        running(Runtime("registry", settings), registry),
        running(Runtime("gateway", settings), _nothing) as gateway,
    ):
        yield Pipeline(gateway, verified)
