"""Gateway settings (``TRUSTPUB_*``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from trustpub.runtime.config import CommonSettings, ExchangeSettings, HttpSettings, UploadTokenCheckSettings


@dataclass(frozen=True, kw_only=True)
class Settings(CommonSettings, HttpSettings, ExchangeSettings, UploadTokenCheckSettings):
    ops_port: int = 9100
    # POST /_/oidc/explain (gateway/explain.py); off answers 404.
    explain_enabled: bool = True
    # A GitHub token is ~1-2 KiB; 64 KiB leaves room and bounds parsing work.
    max_body_bytes: int = 65536
    # The admin API (gateway/admin.py): off unless a port is set (0: any free port). The public
    # Service and Ingress never expose it (DESIGN.md, "The admin API").
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None
    # How long clients may cache /_/oidc/jwks (Cache-Control: max-age).
    jwks_cache_seconds: float = 60.0
    # Slow clients (limits.py): a request body must arrive within body_timeout seconds (408),
    # a request head within header_timeout seconds of connecting or of the previous answer
    # (the connection is closed). A CI client sends its ~2 KiB in milliseconds.
    body_timeout: float = 10.0
    header_timeout: float = 10.0
    # Request head limits (431): bytes per header line (aiohttp's default) and header count.
    max_header_bytes: int = 8190
    max_headers: int = 64
    # Per-client rate limit of the exchange endpoints (mint-token, its alias, burn-token,
    # explain), requests per second with bursts of rate_limit_burst; 0 switches it off (the
    # benchmark does). Generous on purpose: it stops one client from taking the service's
    # whole capacity (about 1,400 exchanges/s on 2 cores), not a busy CI farm behind one NAT.
    # Lower it where clients' real addresses are known (trusted_proxies).
    rate_limit: float = 500.0
    rate_limit_burst: int = 1000
    # Buckets kept at most (least recently used ones are forgotten): bounds the memory.
    rate_limit_clients: int = 100_000
    # The limit across replicas (shared_limit.py): a client that has spent half its burst on a
    # replica is counted in a JetStream bucket that every replica watches, folded in every
    # rate_limit_sync seconds. Off, or with the bucket unreachable, each replica limits alone.
    rate_limit_shared: bool = True
    rate_limit_sync: float = 0.25
    # Addresses or CIDR blocks of reverse proxies whose X-Forwarded-For names the client;
    # from anyone else the header is ignored.
    trusted_proxies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_positive("body_timeout", "header_timeout")
        if not 1024 <= self.max_header_bytes <= 65536:
            msg = f"TRUSTPUB_MAX_HEADER_BYTES must be between 1024 and 65536, got {self.max_header_bytes}"
            raise ValueError(msg)
        if not 8 <= self.max_headers <= 1000:
            msg = f"TRUSTPUB_MAX_HEADERS must be between 8 and 1000, got {self.max_headers}"
            raise ValueError(msg)
        if self.rate_limit < 0 or (self.rate_limit > 0 and self.rate_limit_burst < 1):
            msg = (
                "TRUSTPUB_RATE_LIMIT must be 0 (off) or positive, with TRUSTPUB_RATE_LIMIT_BURST at least 1; "
                f"got {self.rate_limit} and {self.rate_limit_burst}"
            )
            raise ValueError(msg)
        if not 0.01 <= self.rate_limit_sync <= 10:
            msg = f"TRUSTPUB_RATE_LIMIT_SYNC must be between 0.01 and 10 seconds, got {self.rate_limit_sync}"
            raise ValueError(msg)
        if self.rate_limit_clients < 1:
            msg = f"TRUSTPUB_RATE_LIMIT_CLIENTS must be at least 1, got {self.rate_limit_clients}"
            raise ValueError(msg)
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                msg = f"TRUSTPUB_TRUSTED_PROXIES entry {entry!r} is not an IP address or CIDR block"
                raise ValueError(msg) from exc
