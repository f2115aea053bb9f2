"""Settings of the jwks service (``TRUSTPUB_*`` environment variables)."""

from __future__ import annotations

from dataclasses import dataclass

from trustpub.runtime.config import CommonSettings, IssuerSettings, KeyStalenessSettings


@dataclass(frozen=True, kw_only=True)
class Settings(CommonSettings, IssuerSettings, KeyStalenessSettings):
    """What the jwks service reads from its environment, on top of the shared settings."""

    ops_port: int = 9101
    # Budget of one whole fetch (discovery document and key set): (DESIGN.md, "Keys of identity providers").
    fetch_timeout: float = 5.0
    # A real JWKS is a few KiB (GitHub's is ~3 KiB); 256 KiB leaves room and bounds memory.
    max_response_bytes: int = 256 * 1024
    max_keys: int = 50
    # Periodic refresh: a key the issuer withdrew stops verifying within one period.
    refresh_interval: float = 900.0
    # Minimum time between two fetches of one issuer on demand (Warehouse's value), so that
    # tokens naming random kids cannot make trustpub hammer an identity provider.
    refresh_cooldown: float = 60.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_positive("fetch_timeout")
        self.require(
            self.max_response_bytes > 0 and self.max_keys > 0,
            "TRUSTPUB_MAX_RESPONSE_BYTES and TRUSTPUB_MAX_KEYS must be positive",
        )
        self.require(
            self.refresh_interval > 0 and self.refresh_cooldown >= 0,
            "TRUSTPUB_REFRESH_INTERVAL must be positive and TRUSTPUB_REFRESH_COOLDOWN not negative",
        )
