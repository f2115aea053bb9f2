"""The service runtime: NATS connection, endpoints, ops server, graceful drain.

A service's domain code never touches NATS objects. It registers plain async functions::

    await rt.endpoint(rt.subjects.token_verify, VerifyRequest, handle_verify)

and the endpoint adapter here is the one place where exceptions become replies: a
:class:`TrustpubError` becomes an :class:`ErrorReply` with its code, anything else an
``internal-error`` without detail, logged with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import structlog
from aiohttp import web
from nats.aio.client import Client as NatsClient
from nats.micro import add_service
from nats.micro.request import Request as MicroRequest
from nats.micro.service import Service as MicroService
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from trustpub.messages import EXCHANGE_ID_HEADER, InternalError, Subjects, TrustpubError, Unavailable
from trustpub.messages.v1 import ErrorReply, Reply, encode
from trustpub.runtime.config import CommonSettings
from trustpub.runtime.logging import configure as configure_logging
from trustpub.runtime.metrics import RuntimeMetrics, endpoint_label

log = structlog.get_logger("trustpub.runtime")

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep", bound=msgspec.Struct)
Handler = Callable[[Req], Awaitable[msgspec.Struct]]
HealthCheck = Callable[[], Awaitable[bool]]

_reply_decoder = msgspec.json.Decoder(Reply)


class Runtime:
    """What a running service holds: settings, NATS, metrics, health checks."""

    def __init__(self, name: str, settings: CommonSettings, version: str = "1.0.0") -> None:
        self.name = name
        self.settings = settings
        self.version = version
        self.subjects = Subjects(settings.subject_root)
        self.registry = CollectorRegistry()
        self.metrics = RuntimeMetrics(self.registry, name)
        self.nc: NatsClient = NatsClient()
        self.ready = False
        self.stopping = False
        self.checks: dict[str, HealthCheck] = {}
        # Reported by /readyz under "advisories" but not part of its verdict: what a service
        # knows about things that do not make it unfit for work (a verifier's keys per issuer).
        self.advisories: dict[str, HealthCheck] = {}
        self.ops_port = 0
        self.http_port = 0  # the gateway's public port, once bound
        # Run after "not ready" and the grace period, before NATS drains: a front door
        # (the gateway's HTTP server) closes here so in-flight requests finish with NATS up.
        self.before_drain: list[Callable[[], Awaitable[None]]] = []
        self._service: MicroService | None = None
        self._endpoints: list[tuple[str, Callable[[MicroRequest], Awaitable[None]]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []

    # -- lifecycle --------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect to NATS; reconnect forever afterwards (the server may restart)."""

        async def on_disconnect() -> None:
            if not self.stopping:
                log.warning("nats_disconnected")

        async def on_reconnect() -> None:
            log.info("nats_reconnected")

        async def on_error(exc: Exception) -> None:
            log.warning("nats_error", error=type(exc).__name__, detail=str(exc))

        await self.nc.connect(
            self.settings.nats_url,
            name=f"trustpub-{self.name}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # nats-py takes seconds as float
            connect_timeout=5,
            allow_reconnect=True,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            error_cb=on_error,
        )
        self.checks.setdefault("nats", self._nats_ok)

    async def _nats_ok(self) -> bool:
        return self.nc.is_connected

    async def start_endpoints(self) -> None:
        """Register every endpoint as one nats.micro service (``$SRV`` discovery, stats)."""
        self._service = await add_service(
            self.nc,
            name=f"trustpub-{self.name}",
            version=self.version,
            description=f"trustpub {self.name} service",
        )
        for subject, cb in self._endpoints:
            await self._service.add_endpoint(
                name=endpoint_label(subject, self.subjects.root).replace(".", "-"),
                subject=subject,
                queue_group=f"{self.subjects.root}.{self.name}",
                handler=cb,
            )

    async def drain(self) -> None:
        """Stop taking work, finish what is in flight, close the connection."""
        self.stopping = True
        self.set_ready(False)
        await asyncio.sleep(self.settings.drain_grace)
        for callback in self.before_drain:
            with contextlib.suppress(Exception):
                await callback()
        # Loops (consumers, watchers, refreshers) stop before NATS drains: a pull request
        # or watch in flight would otherwise hold the drain until its own timeout.
        for task in self._background:
            task.cancel()
        if self._background:
            _, pending = await asyncio.wait(self._background, timeout=5)
            log.debug("drain_background_stopped", still_running=len(pending))
        # Stop deliveries to our endpoints but handle what was already delivered, then let
        # the handler tasks in flight finish while the connection can still carry their
        # replies; only then drain the rest (discovery, watchers) and close.
        await self._drain_endpoints()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self.nc.is_connected:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        log.debug("drain_nats_drained", in_flight=len(self._tasks))
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def _drain_endpoints(self) -> None:
        if self._service is None or not self.nc.is_connected:
            return
        # nats.micro has no public "stop taking requests, finish the delivered ones" (its
        # stop() drops them), so drain each endpoint's subscription directly.
        for endpoint in getattr(self._service, "_endpoints", []):
            sub = getattr(endpoint, "_subscription", None)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.drain()

    def set_ready(self, ready: bool) -> None:  # noqa: FBT001
        self.ready = ready
        self.metrics.ready_child.set(1 if ready else 0)

    def background(self, coro: Coroutine[Any, Any, None], name: str = "") -> asyncio.Task[None]:
        """Run a long-lived loop; it is cancelled when the service starts draining."""
        task = asyncio.create_task(coro, name=name or None)
        self._background.append(task)
        return task

    def spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        """Run a background task that drain waits for."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- endpoints --------------------------------------------------------------------

    def endpoint(
        self,
        subject: str,
        request_type: type[Req],
        handler: Handler[Req],
        *,
        concurrency: int = 1,
    ) -> None:
        """Serve ``subject`` with ``handler``; replies are encoded, errors enveloped.

        With ``concurrency`` above 1 each request runs as its own task (nats-py runs a
        subscription's callbacks one after another), at most ``concurrency`` at once;
        past that the subscription waits, which pushes back on the sender.
        """
        decoder = msgspec.json.Decoder(request_type)
        label = endpoint_label(subject, self.subjects.root)
        hist = self.metrics.endpoint_duration
        observe = {o: hist.labels(label, o) for o in ("ok", "error", "internal")}
        inflight = self.metrics.endpoint_inflight.labels(label)

        async def process(req: MicroRequest) -> None:
            started = time.perf_counter()
            exchange_id = (req.headers or {}).get(EXCHANGE_ID_HEADER, "")
            outcome = "ok"
            inflight.inc()
            with structlog.contextvars.bound_contextvars(exchange_id=exchange_id):
                try:
                    reply: msgspec.Struct = await handler(decoder.decode(req.data))
                except TrustpubError as exc:
                    outcome = "internal" if isinstance(exc, InternalError) else "error"
                    reply = ErrorReply(code=exc.code.value, description=exc.description, context=exc.context)
                except msgspec.ValidationError as exc:
                    outcome = "internal"
                    log.warning("bad_request_message", endpoint=label, error=str(exc))
                    reply = ErrorReply(code="internal-error", description="malformed request message")
                except Exception:  # the adapter is where every failure becomes a reply
                    outcome = "internal"
                    log.exception("endpoint_failed", endpoint=label)
                    reply = ErrorReply(code="internal-error", description="internal error")
                finally:
                    inflight.dec()
                with contextlib.suppress(Exception):
                    await req.respond(encode(reply))
            observe[outcome].observe(time.perf_counter() - started)

        if concurrency <= 1:
            self._endpoints.append((subject, process))
            return

        sem = asyncio.Semaphore(concurrency)

        async def run(req: MicroRequest) -> None:
            try:
                await process(req)
            finally:
                sem.release()

        async def spawn(req: MicroRequest) -> None:
            await sem.acquire()
            self.spawn(run(req))

        self._endpoints.append((subject, spawn))

    # -- requests to other services ---------------------------------------------------

    async def request(
        self,
        subject: str,
        message: msgspec.Struct,
        reply_type: type[Rep],
        *,
        timeout: float,
        exchange_id: str = "",
    ) -> Rep:
        """Send ``message`` and return the reply, or raise the error it carries.

        Raises:
            TrustpubError: the service answered with an error reply (same code).
            Unavailable: no service answered within ``timeout``, or none is running.
        """
        label = endpoint_label(subject, self.subjects.root)
        started = time.perf_counter()
        outcome = "ok"
        try:
            if timeout <= 0:
                raise Unavailable(f"the request deadline passed before {label} was asked")
            try:
                msg = await self.nc.request(
                    subject,
                    encode(message),
                    timeout=timeout,
                    headers={EXCHANGE_ID_HEADER: exchange_id} if exchange_id else None,
                )
            except nats.errors.NoRespondersError:
                raise Unavailable(f"no {label} service is running") from None
            except (TimeoutError, nats.errors.TimeoutError):
                raise Unavailable(f"{label} did not answer within {timeout:.1f} s") from None
            except (
                nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError,
                nats.errors.OutboundBufferLimitError,
                nats.errors.StaleConnectionError,
            ):
                raise Unavailable("the message bus is unreachable") from None
            reply = _reply_decoder.decode(msg.data)
            if isinstance(reply, ErrorReply):
                raise TrustpubError.from_code(reply.code, reply.description, reply.context)
            if not isinstance(reply, reply_type):
                raise InternalError(f"{label} answered with {type(reply).__name__}")
        except TrustpubError as exc:
            outcome = exc.code.value
            raise
        else:
            return reply
        finally:
            self.metrics.request_duration.labels(label, outcome).observe(time.perf_counter() - started)

    # -- ops server -------------------------------------------------------------------

    def ops_app(self) -> web.Application:
        """``/livez``, ``/readyz`` (with one line per dependency check) and ``/metrics``."""

        async def livez(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "service": self.name})

        async def readyz(_: web.Request) -> web.Response:
            results: dict[str, bool] = {}
            for name, check in self.checks.items():
                try:
                    results[name] = await asyncio.wait_for(check(), timeout=2)
                except Exception:  # noqa: BLE001  (a failing check is "not ready", never a 500)
                    results[name] = False
            ok = self.ready and not self.stopping and all(results.values())
            body: dict[str, object] = {"ready": ok, "service": self.name, "checks": results}
            if self.advisories:
                advised: dict[str, bool] = {}
                for name, check in self.advisories.items():
                    try:
                        advised[name] = await asyncio.wait_for(check(), timeout=2)
                    except Exception:  # noqa: BLE001  (reported as false, never a 500)
                        advised[name] = False
                body["advisories"] = advised
            return web.json_response(body, status=200 if ok else 503)

        async def metrics(_: web.Request) -> web.Response:
            resp = web.Response(body=generate_latest(self.registry))
            resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
            return resp

        app = web.Application()
        app.router.add_get("/livez", livez)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)
        return app

    @contextlib.asynccontextmanager
    async def ops_server(self) -> AsyncIterator[None]:
        runner = web.AppRunner(self.ops_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.ops_host, self.settings.ops_port)
        await site.start()
        server = site._server  # noqa: SLF001  (aiohttp has no public accessor for the bound port)
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.ops_port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info("ops_listening", host=self.settings.ops_host, port=self.ops_port)
        try:
            yield
        finally:
            await runner.cleanup()


Setup = Callable[[Runtime, contextlib.AsyncExitStack], Awaitable[None]]


def new_exchange_id() -> str:
    return uuid.uuid4().hex


async def serve(rt: Runtime, setup: Setup, *, stop: asyncio.Event | None = None) -> None:
    """Run a service until SIGTERM/SIGINT (or ``stop``), then drain and exit.

    Order: ops server, NATS, the service's own ``setup`` (which registers endpoints and
    enters its resources on the exit stack), endpoints, ready. On stop: not ready, a short
    grace, ``nc.drain()``, resources closed in reverse order.
    """
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(rt.ops_server())
        await rt.connect()
        await setup(rt, stack)
        await rt.start_endpoints()
        rt.set_ready(True)
        log.info("service_ready", nats=rt.settings.nats_url, root=rt.subjects.root)
        await stop.wait()
        log.info("service_stopping")
        await rt.drain()
    log.info("service_stopped")


def main(name: str, settings: CommonSettings, setup: Setup) -> None:
    """Entry point of ``python -m trustpub.<service>``."""
    configure_logging(name, level=settings.log_level, fmt=settings.log_format)
    rt = Runtime(name, settings)
    try:
        import uvloop  # noqa: PLC0415  (optional speed-up: the event loop of choice when installed)
    except ImportError:  # pragma: no cover
        asyncio.run(serve(rt, setup))
    else:
        uvloop.run(serve(rt, setup))


def any_reply(data: bytes) -> Any:  # noqa: ANN401
    """Decode any v1 reply (used by tools and tests)."""
    return _reply_decoder.decode(data)
