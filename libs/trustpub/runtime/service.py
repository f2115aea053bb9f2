"""The service runtime: NATS connection, endpoints, ops server, graceful drain.

A service's domain code never touches NATS objects. It serves a declared endpoint
(:mod:`trustpub.messages.endpoints`) with a plain async function::

    rt.serve(TOKEN_VERIFY, handle_verify)

and the endpoint adapter here is the one place where a message is checked and where
exceptions become replies. Before a handler sees a request, the adapter checks that the reply
goes to the inbox of a service the declaration allows, and for a sealed endpoint that the
request carries the seal of an allowed caller (runtime/seal.py); a message that fails is
counted (``trustpub_bus_refused_total``), logged with whoever it claims to come from, and
dropped. A handler returns the reply, or :class:`Forward` to hand its result to the next stage
of the pipeline, which then answers the same inbox. A :class:`TrustpubError` becomes an
:class:`ErrorReply` with its code, anything else an ``internal-error`` without detail, logged
with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import signal
import time
import typing
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import nats
import nats.errors
import structlog
from aiohttp import web
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from trustpub.messages import (
    DEADLINE_HEADER,
    EXCHANGE_ID_HEADER,
    InternalError,
    Subjects,
    TrustpubError,
    Unavailable,
)
from trustpub.messages.endpoints import Endpoint, Event, inbox_prefix, reply_origins
from trustpub.messages.v1 import ErrorReply, Reply, encode
from trustpub.runtime.bus import connect_options, redact
from trustpub.runtime.config import CommonSettings
from trustpub.runtime.logging import configure as configure_logging
from trustpub.runtime.metrics import RuntimeMetrics
from trustpub.runtime.seal import MAX_VALIDITY_S, SEAL_HEADER, SealError, Seals

log = structlog.get_logger("trustpub.runtime")

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep", bound=msgspec.Struct)
HealthCheck = Callable[[], Awaitable[bool]]

_reply_decoder = msgspec.json.Decoder(Reply)
# A request without a deadline header (none of trustpub's own) gets this much time.
DEFAULT_DEADLINE_S = 5.0
# Requests an endpoint holds while it is busy: past this, NATS's client drops new ones (their
# callers answer 503 at their deadline, with nothing done). Queued longer than a deadline, a
# request would be dropped unhandled anyway; 2,048 is seconds of the measured peak rate
# (DESIGN.md, "Performance").
QUEUE_LIMIT = 2048
QUEUE_LIMIT_BYTES = 16 * 1024 * 1024
# A request that found no responder is asked again after this, doubling up to the maximum.
RETRY_BACKOFF_S = 0.05
RETRY_BACKOFF_MAX_S = 0.8


@dataclass(frozen=True, slots=True)
class Forward(Generic[Req]):
    """A stage's result, handed to the endpoint its declaration forwards to."""

    message: Req


@dataclass(frozen=True, slots=True)
class Delivery:
    """The request a handler is working on: its exchange id and deadline (unix seconds)."""

    exchange_id: str
    deadline: float

    @property
    def remaining(self) -> float:
        return self.deadline - time.time()


_delivery: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar("delivery", default=None)


def current_delivery() -> Delivery | None:
    """The request the running handler serves (None outside a handler)."""
    return _delivery.get()


Handler = Callable[[Req], Awaitable[msgspec.Struct | Forward[Any]]]


def _claimed(seal: str | None) -> str:
    """The sender a seal header names (``v1 <sender> <kid> <mac>``), whether or not it holds."""
    fields = (seal or "").split(" ")
    return fields[1] if len(fields) > 1 else ""


def _owner(reply: str, root: str) -> str:
    """The service whose private inbox ``reply`` is under, for the log of a refusal."""
    prefix = f"_INBOX.{root}."
    return reply[len(prefix) :].split(".", 1)[0][:40] if reply.startswith(prefix) else "?"


class Runtime:
    """What a running service holds: settings, NATS, metrics, health checks."""

    def __init__(self, name: str, settings: CommonSettings) -> None:
        self.name = name
        self.settings = settings
        self.subjects = Subjects(settings.subject_root)
        self.registry = CollectorRegistry()
        self.metrics = RuntimeMetrics(self.registry, name)
        self.nc: NatsClient = NatsClient()
        self.seals = Seals(name, {})
        self.ready = False
        self.stopping = False
        self.checks: dict[str, HealthCheck] = {}
        # Reported by /readyz under "advisories" but not part of its verdict: what a service
        # knows about things that do not make it unfit for work (a verifier's keys per issuer).
        self.advisories: dict[str, HealthCheck] = {}
        self.ops_port = 0
        self.http_port = 0  # the gateway's public port, once bound
        self.admin_port = 0  # the gateway's admin API port, once bound (if it listens)
        # Run after "not ready" and the grace period, before NATS drains: a front door
        # (the gateway's HTTP server) closes here so in-flight requests finish with NATS up.
        self.before_drain: list[Callable[[], Awaitable[None]]] = []
        self._endpoints: list[tuple[Endpoint[Any, Any], Callable[[Msg], Awaitable[None]]]] = []
        self._subscriptions: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._decoders: dict[Endpoint[Any, Any], msgspec.json.Decoder[Any]] = {}

    # -- lifecycle --------------------------------------------------------------------

    async def connect(self) -> None:
        """Load this service's seal keys and connect to NATS as its own user; reconnect
        forever afterwards (the server may restart).

        Raises:
            ConfigError: credentials, TLS settings or seal keys are missing or unusable.
            KeyRingError: a seal key ring is unusable.
        """
        self.seals = Seals.load(self.name, self.settings.bus_secrets_dir)
        options = connect_options(self.settings, self.name, self.subjects.root)
        if self.settings.nats_plaintext:
            log.warning(
                "nats_plaintext", reason="TRUSTPUB_NATS_PLAINTEXT: bus traffic is not encrypted by trustpub"
            )

        async def on_disconnect() -> None:
            if not self.stopping:
                log.warning("nats_disconnected")

        async def on_reconnect() -> None:
            log.info("nats_reconnected")

        async def on_error(exc: Exception) -> None:
            # A permissions violation lands here: this service did something its declaration
            # does not allow, or the server's authorization is not the generated one.
            log.warning("nats_error", error=type(exc).__name__, detail=redact(str(exc))[:300])

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
            **options,
        )
        self.checks.setdefault("nats", self._nats_ok)

    async def _nats_ok(self) -> bool:
        return self.nc.is_connected

    async def start_endpoints(self) -> None:
        """Subscribe every endpoint in its queue group."""
        for endpoint, cb in self._endpoints:
            sub = await self.nc.subscribe(
                endpoint.subject(self.subjects.root),
                queue=endpoint.queue(self.subjects.root),
                cb=cb,
                pending_msgs_limit=QUEUE_LIMIT,
                pending_bytes_limit=QUEUE_LIMIT_BYTES,
            )
            self._subscriptions.append(sub)
        if self._endpoints:
            await self.nc.flush()

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
        # replies; only then drain the rest (watchers) and close.
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
        if not self.nc.is_connected:
            return
        for sub in self._subscriptions:
            with contextlib.suppress(Exception):
                await sub.drain()  # type: ignore[no-untyped-call]

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

    def serve(
        self,
        endpoint: Endpoint[Req, Any],
        handler: Handler[Req],
        *,
        concurrency: int = 1,
    ) -> None:
        """Serve ``endpoint`` with ``handler`` (see the module doc for what is checked first).

        With ``concurrency`` above 1 each request runs as its own task (nats-py runs a
        subscription's callbacks one after another), at most ``concurrency`` at once;
        past that the subscription waits, which pushes back on the sender.

        Raises:
            ValueError: ``endpoint`` is not declared as served by this service.
        """
        if endpoint.server != self.name:
            msg = f"{endpoint!r} is served by {endpoint.server}, not by {self.name}"
            raise ValueError(msg)
        process = _Adapter(self, endpoint, handler).process
        if concurrency <= 1:
            self._endpoints.append((endpoint, process))
            return

        sem = asyncio.Semaphore(concurrency)

        async def run(msg: Msg) -> None:
            try:
                await process(msg)
            finally:
                sem.release()

        async def spawn(msg: Msg) -> None:
            await sem.acquire()
            self.spawn(run(msg))

        self._endpoints.append((endpoint, spawn))

    # -- requests to other services ---------------------------------------------------

    def _decoder(self, endpoint: Endpoint[Any, Any]) -> msgspec.json.Decoder[Any]:
        decoder = self._decoders.get(endpoint)
        if decoder is None:
            union: Any = typing.Union[endpoint.reply, ErrorReply]  # noqa: UP007  (a union built at run time)
            decoder = self._decoders[endpoint] = msgspec.json.Decoder(union)
        return decoder

    async def call(
        self,
        endpoint: Endpoint[Any, Rep],
        message: msgspec.Struct,
        *,
        deadline: float,
        exchange_id: str = "",
    ) -> Rep:
        """Send ``message`` to ``endpoint`` and return what the pipeline answers, or raise
        the error it carries. ``deadline`` is unix seconds; it travels with the request, as does
        ``exchange_id``: by default the one bound to this task's log lines (an HTTP request's,
        or the message being handled), so the stages' lines for the call carry it too.

        Raises:
            TrustpubError: a stage answered with an error reply (same code).
            Unavailable: no answer before the deadline, no service is running, or the bus is
                unreachable.
            ValueError: this service is not among the endpoint's declared callers, or the
                endpoint is a later stage of a pipeline (it answers the pipeline's first caller).
        """
        if self.name not in endpoint.callers or self.name not in reply_origins(endpoint):
            msg = f"{self.name} may not call {endpoint!r}"
            raise ValueError(msg)
        label = endpoint.label
        if not exchange_id:
            exchange_id = str(structlog.contextvars.get_contextvars().get("exchange_id", ""))
        started = time.perf_counter()
        outcome = "ok"
        try:
            timeout = deadline - time.time()
            if timeout <= 0:
                raise Unavailable(f"the request deadline passed before {label} was asked")
            data = await self._exchange(endpoint, encode(message), deadline, exchange_id, timeout)
            reply = self._decoder(endpoint).decode(data)
            if isinstance(reply, ErrorReply):
                raise TrustpubError.from_code(reply.code, reply.description, reply.context)
        except TrustpubError as exc:
            outcome = exc.code.value
            raise
        except msgspec.ValidationError as exc:
            outcome = "internal-error"
            # The cause names the field that did not validate.
            raise InternalError(
                f"{label} answered with something else than {endpoint.reply.__name__}"
            ) from exc
        else:
            return typing.cast("Rep", reply)
        finally:
            self.metrics.request_duration.labels(label, outcome).observe(time.perf_counter() - started)

    async def _exchange(
        self, endpoint: Endpoint[Any, Any], data: bytes, deadline: float, exchange_id: str, timeout: float
    ) -> bytes:
        subject = endpoint.subject(self.subjects.root)
        deadline_text = f"{deadline:.3f}"
        headers = {DEADLINE_HEADER: deadline_text}
        if exchange_id:
            headers[EXCHANGE_ID_HEADER] = exchange_id
        backoff = RETRY_BACKOFF_S
        while True:
            try:
                msg = await self._request(endpoint, subject, data, headers, timeout)
                break
            except (nats.errors.NoRespondersError, nats.errors.ConnectionReconnectingError) as exc:
                # A stage is not subscribed (yet), or the bus is coming back: after a NATS
                # restart the services resubscribe within moments, a restarted one within
                # seconds. Ask again until the deadline; the exchange id is the same, so a stage
                # that did its part already does not do it twice (DESIGN.md, "Exactly once, as
                # the publisher sees it").
                if deadline - time.time() <= backoff:
                    if isinstance(exc, nats.errors.NoRespondersError):
                        raise Unavailable(f"no {endpoint.label} service is running") from None
                    raise Unavailable("the message bus is unreachable") from None
                self.metrics.retried.labels(endpoint.label).inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_BACKOFF_MAX_S)
                timeout = deadline - time.time()
            except (TimeoutError, nats.errors.TimeoutError):
                raise Unavailable(f"{endpoint.label} did not answer within {timeout:.1f} s") from None
            except (
                nats.errors.ConnectionClosedError,
                nats.errors.OutboundBufferLimitError,
                nats.errors.StaleConnectionError,
            ) as exc:
                raise Unavailable("the message bus is unreachable") from exc
        if endpoint.sealed_reply:
            try:
                self.seals.check_message(
                    (msg.headers or {}).get(SEAL_HEADER),
                    allowed=(endpoint.server,),
                    subject=subject,
                    reply=msg.subject,
                    exchange_id=exchange_id,
                    deadline=deadline_text,
                    data=msg.data,
                    now=time.time(),
                )
            except SealError as exc:
                self.metrics.bus_refused.labels(endpoint.label, exc.reason).inc()
                log.warning("bus_reply_refused", endpoint=endpoint.label, reason=exc.reason, detail=str(exc))
                raise Unavailable(f"the answer of {endpoint.label} could not be authenticated") from None
        return bytes(msg.data)

    async def _request(
        self, endpoint: Endpoint[Any, Any], subject: str, data: bytes, headers: dict[str, str], timeout: float
    ) -> Msg:
        """One request; for a sealed endpoint it carries this service's seal, which binds the
        reply subject, so the inbox is chosen here rather than by ``nc.request`` (the upload
        gate's ``upload.record``).

        Raises:
            nats.errors.NoRespondersError: nobody serves the subject.
            nats.errors.TimeoutError: no answer within ``timeout``.
        """
        if not endpoint.sealed:
            return await self.nc.request(subject, data, timeout=timeout, headers=headers)
        inbox = self.nc.new_inbox()
        sealed = {
            **headers,
            SEAL_HEADER: self.seals.seal_message(
                endpoint.server,
                subject=subject,
                reply=inbox,
                exchange_id=headers.get(EXCHANGE_ID_HEADER, ""),
                deadline=headers[DEADLINE_HEADER],
                data=data,
            ),
        }
        sub = await self.nc.subscribe(inbox, max_msgs=1)
        try:
            await self.nc.publish(subject, data, reply=inbox, headers=sealed)
            msg = await sub.next_msg(timeout=timeout)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if not msg.data and (msg.headers or {}).get("Status") == "503":
            raise nats.errors.NoRespondersError
        return msg

    # -- events -----------------------------------------------------------------------

    async def publish_event(
        self, event: Event[Any], message: msgspec.Struct, event_id: str, *, timeout: float = 2.0
    ) -> None:
        """Publish one event (sealed for its consumer when declared so) and wait until
        JetStream has stored it; ``Nats-Msg-Id`` = ``event_id`` lets JetStream drop a re-sent
        duplicate.

        Raises:
            Unavailable: JetStream did not acknowledge within ``timeout``.
            ValueError: this service may not publish ``event``.
        """
        if self.name not in event.publishers:
            msg = f"{self.name} may not publish {event!r}"
            raise ValueError(msg)
        subject = event.subject(self.subjects.root)
        data = encode(message)
        headers = {"Nats-Msg-Id": event_id}
        if event.sealed:
            (consumer,) = event.consumers
            headers[SEAL_HEADER] = self.seals.entry_header(consumer, subject, data)
        try:
            await self.nc.jetstream().publish(subject, data, timeout=timeout, headers=headers)
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable(f"event stream did not acknowledge {subject}") from exc

    def check_event(self, event: Event[Any], msg: Msg) -> str:
        """The publisher of a stored ``event`` message, if its seal holds.

        Raises:
            SealError: the seal is missing or wrong, or names a service that may not publish it.
        """
        return self.seals.check_entry_header(
            (msg.headers or {}).get(SEAL_HEADER),
            allowed=event.publishers,
            key=event.subject(self.subjects.root),
            data=msg.data,
        )

    # -- ops server -------------------------------------------------------------------

    def ops_app(self) -> web.Application:
        """``/livez``, ``/readyz`` (with one line per dependency check) and ``/metrics``."""

        async def livez(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "service": self.name})

        async def readyz(_: web.Request) -> web.Response:
            # Snapshots: start-up may add a check while one of these is awaited.
            results: dict[str, bool] = {}
            for name, check in list(self.checks.items()):
                try:
                    results[name] = await asyncio.wait_for(check(), timeout=2)
                except Exception:  # noqa: BLE001  (a failing check is "not ready", never a 500)
                    results[name] = False
            ok = self.ready and not self.stopping and all(results.values())
            body: dict[str, object] = {"ready": ok, "service": self.name, "checks": results}
            if self.advisories:
                advised: dict[str, bool] = {}
                for name, check in list(self.advisories.items()):
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
        self.ops_port = bound_port(runner, self.settings.ops_port)
        log.info("ops_listening", host=self.settings.ops_host, port=self.ops_port)
        try:
            yield
        finally:
            await runner.cleanup()


class _Refused(Exception):
    """A message the adapter will not act upon; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str, sender: str = "") -> None:
        super().__init__(detail)
        self.reason = reason
        self.sender = sender


class _Adapter(Generic[Req]):
    """The one place where a request is checked, handled, answered or handed on."""

    def __init__(self, rt: Runtime, endpoint: Endpoint[Req, Any], handler: Handler[Req]) -> None:
        self.rt = rt
        self.endpoint = endpoint
        self.handler = handler
        self.root = rt.subjects.root
        self.decoder = msgspec.json.Decoder(endpoint.request)
        label = endpoint.label
        self.observe = {o: rt.metrics.endpoint_duration.labels(label, o) for o in _OUTCOMES}
        self.inflight = rt.metrics.endpoint_inflight.labels(label)
        # Replies go only to the private inboxes of the services the declaration allows: a
        # request naming any other reply subject would make this service publish there.
        self.origins = {f"{inbox_prefix(self.root, o)}.": o for o in reply_origins(endpoint)}
        self.inboxes = tuple(self.origins)
        self.next = endpoint.forwards_to
        self.next_subject = self.next.subject(self.root) if self.next is not None else ""

    def _admit(self, msg: Msg, headers: dict[str, str], now: float) -> tuple[str, float, str]:
        """(exchange id, deadline, deadline as sent) of a request this service may act upon.

        Raises:
            _Refused: a reply subject outside the callers' inboxes, or a missing or wrong seal.
        """
        if not msg.reply.startswith(self.inboxes):
            raise _Refused("reply-subject", "the reply subject is not the inbox of an allowed caller")
        exchange_id = headers.get(EXCHANGE_ID_HEADER, "")[:64]
        deadline_text = headers.get(DEADLINE_HEADER, "")
        if self.endpoint.sealed:
            seal = headers.get(SEAL_HEADER)
            try:
                self.rt.seals.check_message(
                    seal,
                    allowed=self.endpoint.callers,
                    subject=msg.subject,
                    reply=msg.reply,
                    exchange_id=exchange_id,
                    deadline=deadline_text,
                    data=msg.data,
                    now=now,
                )
            except SealError as exc:
                raise _Refused(exc.reason, str(exc), _claimed(seal)) from None
        try:
            deadline = min(float(deadline_text), now + MAX_VALIDITY_S)
        except ValueError:
            deadline = now + DEFAULT_DEADLINE_S
            deadline_text = f"{deadline:.3f}"
        return exchange_id, deadline, deadline_text

    async def process(self, msg: Msg) -> None:
        started = time.perf_counter()
        headers = msg.headers or {}
        now = time.time()
        try:
            exchange_id, deadline, deadline_text = self._admit(msg, headers, now)
        except _Refused as exc:
            self.rt.metrics.bus_refused.labels(self.endpoint.label, exc.reason).inc()
            log.warning(
                "bus_message_refused",
                endpoint=self.endpoint.label,
                reason=exc.reason,
                detail=str(exc),
                claimed_sender=exc.sender[:40],
                reply_owner=_owner(msg.reply, self.root),
            )
            return
        if now > deadline:
            # The caller answered at its deadline already: work done now would be for no one
            # (a grant committed now would be one the client never sees).
            self.rt.metrics.expired.labels(self.endpoint.label).inc()
            log.info("request_expired", endpoint=self.endpoint.label, exchange_id=exchange_id)
            return
        outcome = "ok"
        self.inflight.inc()
        token = _delivery.set(Delivery(exchange_id, deadline))
        try:
            with structlog.contextvars.bound_contextvars(exchange_id=exchange_id):
                outcome, out = await self._handle(msg)
                if outcome == "forwarded":
                    await self._forward(msg.reply, out, exchange_id, deadline_text)
                elif self.endpoint.sealed_reply:
                    await self.rt.nc.publish(
                        msg.reply, out, headers=self._reply_seal(msg, out, exchange_id, deadline_text)
                    )
                else:
                    await self.rt.nc.publish(msg.reply, out)
        except Exception:  # noqa: BLE001  (the bus is gone: the caller's deadline answers for us)
            log.debug("reply_not_sent", endpoint=self.endpoint.label)
        finally:
            self.inflight.dec()
            _delivery.reset(token)
            self.observe[outcome].observe(time.perf_counter() - started)

    async def _handle(self, msg: Msg) -> tuple[str, bytes]:
        """(outcome, bytes to send): the reply, the message to hand on, or an error reply."""
        label = self.endpoint.label
        try:
            result = await self.handler(self.decoder.decode(msg.data))
            if isinstance(result, Forward) and self.next is None:
                raise TypeError(f"{self.endpoint!r} forwards nowhere, yet its handler returned a Forward")  # noqa: TRY301
        except TrustpubError as exc:
            outcome = "internal" if isinstance(exc, InternalError) else "error"
            return outcome, encode(
                ErrorReply(code=exc.code.value, description=exc.description, context=exc.context)
            )
        except msgspec.ValidationError as exc:
            log.warning("bad_request_message", endpoint=label, error=str(exc)[:300])
            return "internal", encode(
                ErrorReply(code="internal-error", description="malformed request message")
            )
        except Exception:  # the adapter is where every failure becomes a reply
            log.exception("endpoint_failed", endpoint=label)
            return "internal", encode(ErrorReply(code="internal-error", description="internal error"))
        if isinstance(result, Forward):
            return "forwarded", encode(result.message)
        return "ok", encode(result)

    def _reply_seal(self, msg: Msg, out: bytes, exchange_id: str, deadline_text: str) -> dict[str, str]:
        """The server's seal over its answer, for the caller whose inbox it goes to."""
        caller = next(o for prefix, o in self.origins.items() if msg.reply.startswith(prefix))
        seal = self.rt.seals.seal_message(
            caller,
            subject=msg.subject,
            reply=msg.reply,
            exchange_id=exchange_id,
            deadline=deadline_text,
            data=out,
        )
        return {SEAL_HEADER: seal}

    async def _forward(self, reply: str, data: bytes, exchange_id: str, deadline_text: str) -> None:
        """Hand a stage's result to the next stage, which answers ``reply``."""
        nxt = self.next
        assert nxt is not None  # noqa: S101  (_handle forwards only where the declaration does)
        headers = {EXCHANGE_ID_HEADER: exchange_id, DEADLINE_HEADER: deadline_text}
        if nxt.sealed:
            headers[SEAL_HEADER] = self.rt.seals.seal_message(
                nxt.server,
                subject=self.next_subject,
                reply=reply,
                exchange_id=exchange_id,
                deadline=deadline_text,
                data=data,
            )
        await self.rt.nc.publish(self.next_subject, data, reply=reply, headers=headers)


_OUTCOMES = ("ok", "forwarded", "error", "internal")


Setup = Callable[[Runtime, contextlib.AsyncExitStack], Awaitable[None]]


def bound_port(runner: web.BaseRunner, configured: int) -> int:
    """The port a started runner listens on (the configured one, or what the system chose for 0)."""
    addresses = runner.addresses
    return int(addresses[0][1]) if addresses else configured


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
        log.info("service_ready", nats=redact(rt.settings.nats_url), root=rt.subjects.root)
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
