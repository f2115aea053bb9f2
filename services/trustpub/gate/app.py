"""The upload gate: Trusted Publishing in front of an index that takes uploads with basic auth.

``POST /legacy/`` (as uv and twine send it) takes ``__token__`` and a trustpub upload token,
verifies the token offline against the minter's pinned keys, asks the registry (sealed answer)
whether its mint record is still good, checks the form's distribution against the token's
projects, and streams the upload to the index with the index's own credentials, hashing and
counting the file on the way (gate/upload.py). An upload the index accepts is recorded by the
registry (``upload.record``, sealed) with the token's provenance and published as
``upload.accepted``; every refusal is audited (``upload.refused``). ``GET
/_/provenance/<project>/<file>`` answers the record as a statement signed by the minter.
``/_/oidc/*`` can be passed to the gateway, so one host serves the whole publishing protocol.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import ssl
import time
import uuid
from typing import Any, cast

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from trustpub.gate.config import Settings
from trustpub.gate.upload import MAX_ANSWER, Form, Refusal, Streamer, bad, check_form
from trustpub.messages import InvalidToken, TrustpubError, Unavailable, uploadtoken
from trustpub.messages.endpoints import (
    MINT_STATUS,
    TOKEN_KEYS,
    UPLOAD_ACCEPTED,
    UPLOAD_PROVENANCE,
    UPLOAD_RECORD,
    UPLOAD_REFUSED,
)
from trustpub.messages.text import reason_phrase
from trustpub.messages.v1 import (
    KeysReply,
    KeysRequest,
    MintStatusRequest,
    ProvenanceRequest,
    UploadEvent,
    UploadRecord,
    UploadRecordRequest,
)
from trustpub.runtime import Runtime, bound_port
from trustpub.runtime.events import ensure_stream
from trustpub.runtime.minterkeys import MinterKeys

log = structlog.get_logger("trustpub.gate")

UPLOAD_PATH = "/legacy/"
PROVENANCE_PATH = "/_/provenance/{project}/{filename}"
# An upload takes seconds to minutes: from 10 ms to 10 minutes.
UPLOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# How often the watchdog looks at an upload in flight.
WATCH_INTERVAL_S = 0.5
# Bodies of /_/oidc/* requests passed to the gateway: the gateway's own limit is 64 KiB.
MAX_OIDC_BODY = 64 * 1024
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _basic_password(request: web.Request) -> str:
    """The upload token from ``Authorization: Basic __token__:<token>``.

    Raises:
        Refusal: 401 without basic credentials, or with another user name than ``__token__``.
    """
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        raise Refusal(401, "invalid-token", "Invalid or non-existent authentication information")
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise Refusal(401, "invalid-token", "Invalid or non-existent authentication information") from None
    if user != "__token__" or not sep or not password:
        raise Refusal(401, "invalid-token", "Upload with the user name __token__ and a trustpub upload token")
    return password


class Gate:
    """The HTTP handlers, holding the runtime they talk through and the index's client."""

    def __init__(self, rt: Runtime, settings: Settings) -> None:
        self.rt = rt
        self.settings = settings
        self.keys = MinterKeys(settings.minter_key_ids, self._fetch_keys)
        self.session: aiohttp.ClientSession | None = None
        credentials = f"{settings.index_username}:{settings.index_password_value()}"
        self._index_auth = "Basic " + base64.b64encode(credentials.encode()).decode()
        registry = rt.registry
        self.uploads = Counter(
            "trustpub_gate_uploads_total",
            "Uploads answered by the gate, by outcome (accepted, refused, index-refused, "
            "unavailable) and code.",
            ["outcome", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "trustpub_gate_upload_duration_seconds",
            "Time from an upload's request to its answer, by outcome.",
            ["outcome"],
            buckets=UPLOAD_BUCKETS,
            registry=registry,
        )
        self.bytes = Counter(
            "trustpub_gate_upload_bytes_total",
            "Bytes of files the index accepted through the gate.",
            registry=registry,
        )
        self.inflight = Gauge(
            "trustpub_gate_uploads_inflight", "Uploads the gate is passing on right now.", registry=registry
        )
        self.unrecorded = Counter(
            "trustpub_gate_unrecorded_total",
            "Uploads the index accepted but the registry did not record (answered 503): their files "
            "have no provenance.",
            registry=registry,
        )
        self.provenance_requests = Counter(
            "trustpub_gate_provenance_requests_total",
            "Provenance requests, by outcome (found, not-found, unavailable).",
            ["outcome"],
            registry=registry,
        )

    def _deadline(self) -> float:
        return time.time() + self.settings.request_timeout

    async def _fetch_keys(self) -> KeysReply:
        return await self.rt.call(TOKEN_KEYS, KeysRequest(), deadline=self._deadline())

    # -- POST /legacy/ ------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        facts: dict[str, str] = {}
        self.inflight.inc()
        try:
            response, outcome, code = await self._upload(request, facts)
        except Refusal as exc:
            outcome = "unavailable" if exc.status == 503 else "refused"
            code = exc.code
            response = exc.response()
            log.info("upload_refused", status=exc.status, code=exc.code, reason=exc.message[:300], **facts)
            self._audit_refusal(exc.status, exc.code, exc.message, facts)
        finally:
            self.inflight.dec()
        self.uploads.labels(outcome, code).inc()
        self.duration.labels(outcome).observe(time.perf_counter() - started)
        return response

    async def _authenticate(self, request: web.Request, facts: dict[str, str]) -> dict[str, Any]:
        """The claims of a good upload token.

        Raises:
            Refusal: 401 for a token that is not ours, tampered with, expired or revoked; 503
                when the keys or the registry do not answer.
        """
        token = _basic_password(request)
        facts["token_hash_prefix"] = _token_hash(token)[:16]
        settings = self.settings
        try:
            claims = await self.keys.verify(
                token,
                prefix=settings.token_prefix,
                issuer=settings.token_issuer,
                audience=settings.token_audience,
            )
            facts["mint_id"] = str(claims.get("jti", ""))[:64]
            status = await self.rt.call(
                MINT_STATUS, MintStatusRequest(mint_id=facts["mint_id"]), deadline=self._deadline()
            )
        except InvalidToken as exc:
            raise Refusal(401, "invalid-token", f"Invalid API token: {exc.description}") from None
        except TrustpubError as exc:
            raise Refusal(
                503, "unavailable", f"trustpub is unavailable, try again: {exc.description}"
            ) from None
        if not uploadtoken.matches_record(claims, status):
            raise Refusal(401, "invalid-token", "Invalid API token: the token has been revoked")
        return claims

    async def _upload(self, request: web.Request, facts: dict[str, str]) -> tuple[web.Response, str, str]:
        claims = await self._authenticate(request, facts)
        settings = self.settings
        limit = settings.max_upload_bytes + settings.max_metadata_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Refusal(
                413, "too-large", f"the upload exceeds the limit of {settings.max_upload_bytes} bytes"
            )
        if request.content_type != "multipart/form-data":
            raise bad("an upload is a multipart/form-data form")
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError) as exc:
            raise bad(f"the upload is not a readable form ({exc})") from None
        streamer = Streamer(
            reader,
            max_file=settings.max_upload_bytes,
            max_metadata=settings.max_metadata_bytes,
            idle=settings.body_idle_timeout,
        )
        form = await streamer.head()
        project, version, filename = check_form(form, list(claims.get("projects") or []))
        facts.update(project=project, version=version, filename=filename)
        status, reason, body, content_type = await self._send(streamer, form)
        state = streamer.state
        if not 200 <= status < 300:
            log.info("upload_refused_by_index", status=status, **facts)
            self._audit_refusal(status, "index-refused", body.decode(errors="replace")[:500], facts)
            return self._answer(status, reason, body, content_type), "index-refused", str(status)
        if not state.complete:
            # An index that answered success before it had the whole file: not an upload.
            raise Refusal(503, "unavailable", "the index answered before it received the whole upload")
        record = await self._record(facts, state.sha256, state.size)
        self.bytes.inc(state.size)
        log.info("upload_accepted", size=state.size, sha256=state.sha256, upload_id=record.upload_id, **facts)
        self.rt.spawn(self._publish_accepted(record, status))
        return self._answer(status, reason, body, content_type), "accepted", ""

    async def _send(self, streamer: Streamer, form: Form) -> tuple[int, str, bytes, str]:
        """Stream the upload to the index and return its answer.

        Raises:
            Refusal: what the client's body turned out to be (413, 400), or 503 when the index
                did not answer, stopped reading, or broke the connection.
        """
        task = asyncio.ensure_future(self._post(streamer, form))
        state = streamer.state
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=WATCH_INTERVAL_S)
                if task in done:
                    break
                stalled = time.monotonic() - state.progress
                if not state.waiting_for_client and stalled > self.settings.index_timeout:
                    raise Refusal(
                        503,
                        "unavailable",
                        f"the index did not answer within {self.settings.index_timeout:g} s",
                    )
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        try:
            return task.result()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if state.failure is not None:
                raise state.failure from None
            log.warning("index_unavailable", error=type(exc).__name__, detail=str(exc)[:300])
            raise Refusal(503, "unavailable", "the index does not answer; try again later") from None

    async def _post(self, streamer: Streamer, form: Form) -> tuple[int, str, bytes, str]:
        assert self.session is not None  # noqa: S101  (set up before the first request)
        headers = {"Authorization": self._index_auth, "Content-Type": streamer.content_type}
        async with self.session.post(
            self.settings.index_upload_url, data=streamer.body(form), headers=headers, allow_redirects=False
        ) as resp:
            body = bytearray()
            while len(body) < MAX_ANSWER and (chunk := await resp.content.read(MAX_ANSWER - len(body))):
                body += chunk
            if streamer.state.failure is not None:
                raise streamer.state.failure
            return resp.status, resp.reason or "", bytes(body), resp.headers.get("Content-Type", "text/plain")

    @staticmethod
    def _answer(status: int, reason: str, body: bytes, content_type: str) -> web.Response:
        """The index's own answer, passed on."""
        response = web.Response(status=status, reason=reason_phrase(reason) or None, body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def _record(self, facts: dict[str, str], sha256: str, size: int) -> UploadRecord:
        try:
            return await self.rt.call(
                UPLOAD_RECORD,
                UploadRecordRequest(
                    upload_id=uuid.uuid4().hex,
                    mint_id=facts["mint_id"],
                    project=facts["project"],
                    version=facts["version"],
                    filename=facts["filename"],
                    sha256=sha256,
                    size=size,
                    token_hash_prefix=facts.get("token_hash_prefix", ""),
                ),
                deadline=self._deadline(),
            )
        except TrustpubError as exc:
            # The index has the file; trustpub has no record of it, so it gets no provenance
            # (DESIGN.md, "The upload gate": the one window between the two).
            self.unrecorded.inc()
            log.error("upload_unrecorded", reason=exc.description[:300], sha256=sha256, **facts)  # noqa: TRY400
            raise Refusal(
                503, "unavailable", "the index stored the file but trustpub could not record its provenance"
            ) from None

    async def _publish_accepted(self, record: UploadRecord, status: int) -> None:
        event = UploadEvent(
            event_id=uuid.uuid4().hex,
            at=time.time(),
            outcome="accepted",
            status=status,
            project=record.project,
            version=record.version,
            filename=record.filename,
            sha256=record.sha256,
            size=record.size,
            mint_id=record.mint_id,
            publisher_id=record.publisher_id,
            provenance=record.provenance,
        )
        try:
            await self.rt.publish_event(UPLOAD_ACCEPTED, event, event.event_id)
        except Unavailable:
            log.warning("upload_event_not_published", upload_id=record.upload_id)

    def _audit_refusal(self, status: int, code: str, description: str, facts: dict[str, str]) -> None:
        event = UploadEvent(
            event_id=uuid.uuid4().hex,
            at=time.time(),
            outcome="refused",
            status=status,
            code=code,
            description=description[:500],
            project=facts.get("project", ""),
            version=facts.get("version", ""),
            filename=facts.get("filename", ""),
            mint_id=facts.get("mint_id", ""),
            token_hash_prefix=facts.get("token_hash_prefix", ""),
        )

        async def publish() -> None:
            try:
                await self.rt.publish_event(UPLOAD_REFUSED, event, event.event_id)
            except Unavailable:
                log.warning("upload_refusal_not_audited", code=code)

        self.rt.spawn(publish())

    # -- GET /_/provenance/<project>/<file> ---------------------------------------------------

    async def provenance(self, request: web.Request) -> web.Response:
        """The signed record of an upload the gate passed; 404 for a file it never saw."""
        project, filename = request.match_info["project"], request.match_info["filename"]
        try:
            reply = await self.rt.call(
                UPLOAD_PROVENANCE,
                ProvenanceRequest(project=project, filename=filename),
                deadline=self._deadline(),
            )
        except TrustpubError:
            self.provenance_requests.labels("unavailable").inc()
            return Refusal(503, "unavailable", "trustpub is unavailable, try again").response()
        if not reply.found:
            self.provenance_requests.labels("not-found").inc()
            return web.Response(status=404, text=f"no upload of {filename!r} to {project!r} was recorded\n")
        self.provenance_requests.labels("found").inc()
        return web.Response(
            body=reply.jws.encode(), content_type="application/jose", headers={"Cache-Control": "no-cache"}
        )

    # -- /_/oidc/* ------------------------------------------------------------------------------

    async def oidc(self, request: web.Request) -> web.StreamResponse:
        """Pass a Trusted Publishing request to the gateway (small JSON bodies)."""
        assert self.session is not None  # noqa: S101  (set up before the first request)
        body = await request.content.read(MAX_OIDC_BODY + 1)
        if len(body) > MAX_OIDC_BODY:
            return web.Response(status=413, text="request body too large\n")
        headers = {"X-Forwarded-For": request.remote or ""}
        if "Content-Type" in request.headers:
            headers["Content-Type"] = request.headers["Content-Type"]
        try:
            async with self.session.request(
                request.method,
                self.settings.gateway_url.rstrip("/") + request.path_qs,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout + 5),
            ) as resp:
                answer = await resp.read()
                out = web.Response(status=resp.status, body=answer)
                for key, value in resp.headers.items():
                    if key.lower() not in _HOP_BY_HOP and key.lower() not in {"server", "date"}:
                        out.headers[key] = value
                return out
        except (aiohttp.ClientError, TimeoutError):
            return Refusal(503, "unavailable", "trustpub's gateway does not answer; try again").response()


def http_app(gate: Gate) -> web.Application:
    app = web.Application()
    app.router.add_post(UPLOAD_PATH, gate.upload)
    app.router.add_post(UPLOAD_PATH.rstrip("/"), gate.upload)
    app.router.add_get(PROVENANCE_PATH, gate.provenance)
    if gate.settings.gateway_url:
        app.router.add_route("*", "/_/oidc/{tail:.*}", gate.oidc)
    return app


def _index_tls(settings: Settings) -> ssl.SSLContext | bool:
    if settings.index_tls_ca is None:
        return True
    return ssl.create_default_context(cafile=str(settings.index_tls_ca))


async def setup(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
    settings = cast("Settings", rt.settings)
    gate = Gate(rt, settings)
    try:
        await asyncio.wait_for(ensure_stream(rt.nc.jetstream(), rt.subjects), 5)
    except Exception as exc:  # noqa: BLE001  (events are retried per publish; start regardless)
        log.warning("events_stream_unavailable", error=type(exc).__name__)
    gate.session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=_index_tls(settings)),
        timeout=aiohttp.ClientTimeout(
            total=None, connect=settings.index_connect_timeout, sock_connect=settings.index_connect_timeout
        ),
        auto_decompress=False,
    )
    stack.push_async_callback(gate.session.close)
    ssl_ctx: ssl.SSLContext | None = None
    if settings.tls_cert and settings.tls_key:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    runner = web.AppRunner(http_app(gate), access_log=None)
    await runner.setup()
    rt.before_drain.append(runner.cleanup)  # stop taking uploads, finish the ones in flight
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, settings.http_host, settings.http_port, ssl_context=ssl_ctx)
    await site.start()
    rt.http_port = bound_port(runner, settings.http_port)
    log.info("http_listening", host=settings.http_host, port=rt.http_port, tls=ssl_ctx is not None)
