"""The registry's PostgreSQL connections: the service's pool (:class:`Database`), which
tolerates a database that is down at start, and the CLI's single connection (:func:`connect`);
both with trustpub's jsonb codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import structlog

from trustpub.messages import Unavailable
from trustpub.runtime import current_delivery

log = structlog.get_logger("trustpub.registry.db")

UNAVAILABLE = "the registry database is unavailable"
# Seconds for which a successful statement stands in for a readiness ping.
PING_FRESH_S = 5.0

# Errors that mean "the database cannot answer now" (connection refused or lost, server
# shutting down or starting, a statement or client timeout, out of connections, a
# read-only standby after failover, a serialization failure): a 503 for the caller, never
# an internal error. Anything else from PostgreSQL is a bug.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # includes QueryCanceledError (statement_timeout)
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    # A connection the server just closed can be caught between the error message and
    # the end of the stream ("cannot switch to state ...; another operation is in progress").
    asyncpg.exceptions.InternalClientError,
)

# PEP 508's name: ASCII letters and digits, with ".", "_" and "-" inside. Explicit ASCII
# ranges and no IGNORECASE, so no other character can match (DESIGN.md, "Names are ASCII").


def _dumps(value: Any) -> str:  # noqa: ANN401  (any JSON value)
    return orjson.dumps(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb in and out as Python objects (orjson)."""
    await conn.set_type_codec("jsonb", encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: nothing to reset.

    asyncpg's default reset runs ``RESET ALL; UNLISTEN *; ...`` on every release, a round
    trip per request; trustpub never changes session state (asyncpg still rolls back an
    open transaction before calling this).
    """
    del conn


async def connect(dsn: str, *, timeout: float = 5.0) -> asyncpg.Connection:
    """One connection with trustpub's codecs (the CLI's; services use :class:`Database`)."""
    conn = await asyncpg.connect(dsn, timeout=timeout, command_timeout=timeout * 4)
    await init_connection(conn)
    return conn


class Database:
    """An asyncpg pool that tolerates a database that is down when the service starts.

    The service starts and answers ``unavailable`` (and ``/readyz`` says not ready) until
    the pool could be created; a background task retries. Once created, asyncpg
    reconnects lost connections by itself.
    """

    def __init__(self, dsn: str, *, pool_size: int, timeout: float) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._retry: asyncio.Task[None] | None = None
        self._down_logged = False
        self._last_ok = -PING_FRESH_S
        # FIFO admission in front of the pool: asyncpg's queue lets a newcomer take a
        # released connection ahead of a waiter, which showed as a long p99 tail.
        self._slots = asyncio.Semaphore(pool_size)

    @property
    def pool_size(self) -> int:
        return self._pool_size

    async def start(self) -> None:
        """Create the pool now if the database answers, else keep trying in the background."""
        if not await self._try_create():
            self._retry = asyncio.create_task(self._retry_loop())

    async def _try_create(self) -> bool:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=min(2, self._pool_size),
                max_size=self._pool_size,
                timeout=self._timeout,
                command_timeout=self._timeout,
                server_settings={
                    "application_name": "trustpub-registry",
                    "statement_timeout": str(int(self._timeout * 1000)),
                    # A stalled client must not hold row locks for long.
                    "idle_in_transaction_session_timeout": str(int(self._timeout * 5000)),
                },
                init=init_connection,
                reset=_keep_session,
            )
        except (*OUTAGE_ERRORS, asyncpg.PostgresError) as exc:
            if not self._down_logged:
                log.warning("database_unavailable", error=type(exc).__name__, detail=str(exc))
                self._down_logged = True
            return False
        log.info("database_connected", pool_size=self._pool_size)
        return True

    async def _retry_loop(self) -> None:
        delay = 0.5
        while not await self._try_create():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), timeout=self._timeout * 2)
            except OUTAGE_ERRORS:  # includes TimeoutError
                self._pool.terminate()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; an outage, here or in the block, is :class:`Unavailable`.

        Raises:
            Unavailable: no pool yet, no connection within the timeout, or the database
                failed in a way that means "down" (see ``OUTAGE_ERRORS``).
        """
        if self._pool is None:
            raise Unavailable(UNAVAILABLE)
        # A request waits for a connection only while its caller still waits for the answer.
        delivery = current_delivery()
        wait = self._timeout if delivery is None else min(self._timeout, delivery.remaining)
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=max(wait, 0.0))
        except TimeoutError:
            raise Unavailable(UNAVAILABLE) from None
        try:
            try:
                wait = self._timeout if delivery is None else min(self._timeout, delivery.remaining)
                conn = await self._pool.acquire(timeout=max(wait, 0.001))
            except (*OUTAGE_ERRORS, asyncpg.PostgresError) as exc:
                log.warning("database_unavailable", error=type(exc).__name__, detail=str(exc))
                raise Unavailable(UNAVAILABLE) from exc
            try:
                yield conn
                self._last_ok = time.monotonic()
            except OUTAGE_ERRORS as exc:
                log.warning("database_unavailable", error=type(exc).__name__, detail=str(exc))
                # Never hand a possibly broken connection to the next request; the pool
                # opens a fresh one. (A connection that closed itself is detached already.)
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
                raise Unavailable(UNAVAILABLE) from exc
            finally:
                with contextlib.suppress(*OUTAGE_ERRORS):
                    await self._pool.release(conn, timeout=self._timeout)
        finally:
            self._slots.release()

    async def ping(self) -> bool:
        """Readiness: ``SELECT 1`` through the pool.

        A statement that succeeded in the last few seconds counts as a ping: under full
        load the check would otherwise queue behind the requests and time out, and a busy
        database is not a down one.
        """
        if self._pool is not None and time.monotonic() - self._last_ok < PING_FRESH_S:
            return True
        try:
            async with self.connection() as conn:
                return bool(await conn.fetchval("SELECT 1") == 1)
        except Unavailable:
            return False
