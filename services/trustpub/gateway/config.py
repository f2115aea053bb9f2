"""Gateway settings (``TRUSTPUB_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trustpub.runtime.config import CommonSettings


@dataclass(frozen=True, kw_only=True)
class Settings(CommonSettings):
    ops_port: int = 9100
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # The audience clients request tokens for (GET /_/oidc/audience); PyPI uses "pypi".
    # Give every index its own so a token meant for another index is refused.
    audience: str = "trustpub"
    # Global switch: off answers audience with 403 and mint-token with not-enabled.
    enabled: bool = True
    # End-to-end deadline of one exchange: every service hop gets what is left of it.
    request_timeout: float = 5.0
    # A GitHub token is ~1-2 KiB; 64 KiB leaves room and bounds parsing work.
    max_body_bytes: int = 65536
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Cache of the minter's public keys served at /_/oidc/jwks.
    jwks_cache_seconds: float = 60.0
