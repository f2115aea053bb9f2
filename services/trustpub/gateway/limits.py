"""Limits of the gateway's HTTP transport: what a hostile client can make it hold or do.

- **Body**: at most ``max_body_bytes`` (413), received within ``body_timeout`` seconds (408).
- **Headers**: at most ``max_header_bytes`` per line and ``max_headers`` lines (431); a
  connection that has not sent a complete request head within ``header_timeout`` seconds of
  connecting (or of its previous answer) is closed, so a trickle of header bytes (slowloris)
  holds a connection for seconds, not for aiohttp's default hour.
- **Rate**: a token bucket per client address on the exchange endpoints (429 with
  ``Retry-After``), shared by the gateway replicas through a JetStream bucket for the clients
  that come near their limit (shared_limit.py). The client is the TCP peer;
  ``X-Forwarded-For`` is read only when the peer is one of the operator's ``trusted_proxies``
  (TOB-PYPI-12: a header is not an identity).

Every refusal is PyPI's error shape (``{"message", "errors": [{"code", "description"}]}``),
even those aiohttp's HTTP parser makes before any handler runs.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from aiohttp import web, web_protocol
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from prometheus_client import Counter

from trustpub.gateway.config import Settings
from trustpub.gateway.errors import (
    EXCHANGE_ID,
    EXCHANGE_ID_RESPONSE_HEADER,
    RATE_LIMITED,
    HttpRefusal,
    error_response,
    http_error,
    internal_error,
)
from trustpub.gateway.routes import RateLimit, rate_limit
from trustpub.gateway.shared_limit import SharedCounts
from trustpub.messages.endpoints import RATE_LIMITS
from trustpub.messages.text import shown
from trustpub.runtime import Runtime

log = structlog.get_logger("trustpub.gateway.limits")

# Which routes the rate limit counts, and which of those are exchanges: the route table's
# ``limit`` (routes.py).

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- body ---------------------------------------------------------------------------------


async def read_body(request: web.Request, *, max_bytes: int, timeout: float) -> bytes:
    """The whole request body, bounded in size and in time.

    Raises:
        HttpRefusal: 413 when larger than ``max_bytes`` (announced or streamed), 408 when not
            received within ``timeout`` seconds.
    """
    length = request.content_length
    if length is not None and length > max_bytes:
        raise HttpRefusal(
            f"request body of {length} bytes is larger than the limit of {max_bytes} bytes", status=413
        )
    try:
        async with asyncio.timeout(timeout):
            return await request.read()  # bounded by the app's client_max_size (== max_bytes)
    except TimeoutError as exc:
        raise HttpRefusal(f"request body not received within {timeout:g} s", status=408) from exc
    except web.HTTPRequestEntityTooLarge as exc:
        raise HttpRefusal(f"request body larger than the limit of {max_bytes} bytes", status=413) from exc


# --- errors of aiohttp's HTTP parser, in the JSON shape -------------------------------------


class _JsonErrors(web_protocol.RequestHandler):
    """aiohttp's protocol, answering its own parse errors in trustpub's shape.

    A request that aiohttp's parser refuses (a header line over the limit, too many headers,
    garbage) never reaches a handler or middleware; aiohttp answers it with plain text.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of an answer went out already: the connection cannot carry another one.
            msg = "response is sent already, cannot send another response with the error message"
            raise ConnectionError(msg)
        # aiohttp's own handler logs a traceback with the offending bytes; one line will do.
        log.info(
            "http_request_refused",
            status=status,
            error=type(exc).__name__ if exc is not None else "",
            reason=shown(getattr(exc, "message", "") or message or "", 120),
            client=request.remote,
        )
        if isinstance(exc, LineTooLong) or (
            isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc.message)
        ):
            response = http_error(431, f"request headers are too large: {shown(exc.message, 200)}")
        elif status >= 500:
            # Invariant 3 (DESIGN.md, "Invariants"): never a 500. Nothing of the failure is shown.
            response = internal_error()
        else:
            detail = shown(getattr(exc, "message", "") or message or "", 200)
            response = error_response(
                "invalid-request", f"malformed HTTP request: {detail}", status=status, message="Bad Request"
            )
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _JsonErrors(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp offers no parameter for the protocol class; its Server is the factory.
        server.__class__ = _JsonErrorServer
        return server


# Seconds aiohttp keeps reading (and discarding) a body left unread by an answer (413, 429,
# 408) before it closes the connection: closing with unread data makes the kernel send a reset,
# which can reach the client before the answer does. Its default is 10 s, which a client that
# trickles its body would get on top of the body timeout.
LINGER_S = 2.0


def runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The app's runner with the header limits and the head timeout of ``settings``."""
    return _Runner(
        app,
        access_log=None,
        lingering_time=LINGER_S,
        # aiohttp closes a connection idle for this long, and one that is still sending its
        # request head counts as idle: this is the slowloris bound as well.
        keepalive_timeout=settings.header_timeout,
        max_line_size=settings.max_header_bytes,
        max_field_size=settings.max_header_bytes,
        max_headers=settings.max_headers,
    )


# --- who the client is -----------------------------------------------------------------------


def networks(values: Iterable[str]) -> tuple[Network, ...]:
    """``trusted_proxies`` entries (addresses or CIDR blocks) as networks.

    Raises:
        ValueError: an entry is neither.
    """
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None, trusted: tuple[Network, ...]
) -> bool:
    return addr is not None and any(addr in net for net in trusted)


def client_address(request: web.BaseRequest, trusted: tuple[Network, ...]) -> str:
    """The client's address: the TCP peer, or when that is a trusted proxy, the rightmost
    ``X-Forwarded-For`` entry that is not one (each proxy appends the peer it saw; entries
    further left were written by the client and prove nothing)."""
    peer = request.remote or ""
    if not trusted or not _trusted(_address(peer), trusted):
        return peer
    hops = [h for value in request.headers.getall("X-Forwarded-For", []) for h in value.split(",")]
    for hop in reversed(hops):
        addr = _address(hop)
        if addr is None:
            return peer  # a broken chain: the proxy would have written an address here
        if not _trusted(addr, trusted):
            return str(addr)
    return peer


def bucket_key(address: str) -> str:
    """What one bucket counts: an IPv4 address, or an IPv6 /64 (one host's usual allocation;
    per address, a single client would have 2**64 buckets)."""
    addr = _address(address)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return address


# --- the rate limit ---------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per key: ``burst`` requests at once, refilled at ``rate`` per second.

    At most ``max_clients`` buckets are kept; the least recently used one goes first (a full
    bucket is what a new one would be anyway, so evicting idle clients forgets nothing that
    matters). With ``shared`` set, a client that the replicas share must also have a token in
    its shared level (shared_limit.py); this replica's own bucket always applies, so the limit
    of one replica holds whatever the shared bucket does.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self.clock = clock
        # key -> [tokens, updated, limited]
        self._buckets: collections.OrderedDict[str, list[Any]] = collections.OrderedDict()
        # The levels shared with the other gateway replicas (shared_limit.py), when enabled.
        self.shared: SharedCounts | None = None

    def take(self, key: str) -> tuple[bool, float, bool]:
        """Spend one token of ``key``'s bucket: (allowed, seconds until a token, whether this
        is the first refusal since the client was last allowed)."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._buckets.popitem(last=False)
            bucket = [self.burst, now, False]
            self._buckets[key] = bucket
        else:
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
            self._buckets.move_to_end(key)
        # Where the client is shared with the other replicas, its shared level must allow it too.
        shared = self.shared.level(key) if self.shared is not None else None
        if bucket[0] >= 1.0 and (shared is None or shared >= 1.0):
            bucket[0] -= 1.0
            bucket[2] = False
            if self.shared is not None:
                self.shared.admitted(key, bucket[0])
            return True, 0.0, False
        first = not bucket[2]
        bucket[2] = True
        short = max(1.0 - bucket[0], 0.0 if shared is None else 1.0 - shared)
        return False, short / self.rate, first

    def peek(self, key: str) -> float:
        """``key``'s level now, without spending (full for a client without a bucket)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return self.burst
        return float(min(self.burst, bucket[0] + (self.clock() - bucket[1]) * self.rate))

    def __len__(self) -> int:
        return len(self._buckets)


class ExchangeGuard:
    """The rate limit of the exchange endpoints, as an aiohttp middleware.

    A client over its limit gets 429 with ``Retry-After``. The first refusal of a client's
    run of refusals is audited (an ``exchange.failed`` event, code ``rate-limited``); the
    others are counted in ``trustpub_http_rate_limited_total``, not audited one by one, so a
    flood cannot turn into as many audit rows (DESIGN.md, "Hostile input": aggregated, counted exactly).
    """

    def __init__(self, settings: Settings, audit: Callable[[str, str, str], None], rt: Runtime) -> None:
        self.settings = settings
        # Audits a refused exchange: (exchange id, code, description) (outcome.py).
        self.audit = audit
        self.trusted = networks(settings.trusted_proxies)
        self.limiter = (
            RateLimiter(
                settings.rate_limit, settings.rate_limit_burst, max_clients=settings.rate_limit_clients
            )
            if settings.rate_limit > 0
            else None
        )
        if self.limiter is not None and settings.rate_limit_shared:
            # The limit across replicas: levels shared in a JetStream bucket (shared_limit.py).
            self.limiter.shared = SharedCounts(
                settings.rate_limit,
                settings.rate_limit_burst,
                interval=settings.rate_limit_sync,
                max_clients=settings.rate_limit_clients,
                local_level=self.limiter.peek,
                registry=rt.registry,
            )
            bucket = rt.subjects.bucket(RATE_LIMITS.suffix)
            rt.background(self.limiter.shared.run(rt.nc, bucket), name="rate-limit-shared")
        self.refused = Counter(
            "trustpub_http_rate_limited_total",
            "Requests to the exchange endpoints refused with 429: their client was over its rate limit.",
            registry=rt.registry,
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:  # noqa: ANN401
        limit_class = rate_limit(request.method, request.path)
        if self.limiter is None or limit_class is RateLimit.NONE:
            return await handler(request)  # type: ignore[no-any-return]
        client = client_address(request, self.trusted)
        allowed, retry_after, first = self.limiter.take(bucket_key(client))
        if allowed:
            return await handler(request)  # type: ignore[no-any-return]
        self.refused.inc()
        exchange_id = request[EXCHANGE_ID]
        wait = max(1, math.ceil(retry_after))
        limit = (
            f"{self.settings.rate_limit:g} requests per second (bursts of {self.settings.rate_limit_burst})"
        )
        description = f"too many requests from this client: the limit is {limit}; retry in {wait} s"
        if first:
            log.warning("rate_limited", client=client, path=request.path)
            if limit_class is RateLimit.AUDITED:
                self.audit(
                    exchange_id,
                    RATE_LIMITED,
                    f"client {client} went over the rate limit of {limit}; its further "
                    "refusals until it slows down are counted, not audited one by one",
                )
        return http_error(
            429, description, headers={"Retry-After": str(wait), EXCHANGE_ID_RESPONSE_HEADER: exchange_id}
        )
