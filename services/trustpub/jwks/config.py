"""Settings of the jwks service (``TRUSTPUB_*`` environment variables)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trustpub.runtime.config import CommonSettings


@dataclass(frozen=True, kw_only=True)
class Settings(CommonSettings):
    """What the jwks service reads from its environment, on top of the common settings."""

    ops_port: int = 9101
    # Operator-registered issuers and overrides of the built-in four (TOML); see
    # trustpub.providers.issuers. Only issuers configured here or built in are ever fetched.
    issuers_file: Path | None = None
    disabled_providers: tuple[str, ...] = ()
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
    # Staleness bound, seconds: a set last fetched longer ago than this is not usable (the
    # verifiers refuse it with 503; this service reports not ready): 24 h (DESIGN.md, "Keys of
    # identity providers").
    key_staleness: float = 86400.0

    def __post_init__(self) -> None:
        if self.fetch_timeout <= 0:
            raise ValueError(f"TRUSTPUB_FETCH_TIMEOUT must be positive, got {self.fetch_timeout}")
        if self.max_response_bytes <= 0 or self.max_keys <= 0:
            raise ValueError("TRUSTPUB_MAX_RESPONSE_BYTES and TRUSTPUB_MAX_KEYS must be positive")
        if not self.key_staleness > 0:
            raise ValueError(f"TRUSTPUB_KEY_STALENESS must be positive, got {self.key_staleness}")
        if self.refresh_interval <= 0 or self.refresh_cooldown < 0:
            raise ValueError(
                "TRUSTPUB_REFRESH_INTERVAL must be positive and TRUSTPUB_REFRESH_COOLDOWN not negative"
            )
