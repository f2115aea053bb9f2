"""Settings of the registry service (``TRUSTPUB_*`` environment variables)."""

from __future__ import annotations

from dataclasses import dataclass

from trustpub.runtime.config import CommonSettings, IssuersFileSettings, LeewaySettings


@dataclass(frozen=True, kw_only=True)
class Settings(CommonSettings, IssuersFileSettings, LeewaySettings):
    """The registry owns PostgreSQL: publishers, projects, used token ids, mints, audit."""

    ops_port: int = 9103
    database_url: str = "postgresql://postgres@127.0.0.1:5432/trustpub"
    # Connections in the pool, and requests handled at once: in-flight work is capped at
    # the pool size so that waiters on the pool are not overtaken (DESIGN.md, "Performance").
    pool_size: int = 16
    # Seconds a minted token is valid (PyPI: 900).
    token_lifetime: int = 900
    # Seconds between purges of expired used token ids.
    purge_interval: float = 600.0
    # Connect, statement and query timeout in seconds: an outage answers "unavailable"
    # well within the gateway's request deadline.
    database_timeout: float = 2.0
    # Pending publishers (registered by ``trustpub publisher add ... --pending-project``):
    # days until one expires unused, and how many unexpired ones one registrant may hold at
    # once (PyPI's values: 30 days, 3 per user).
    pending_ttl_days: int = 30
    max_pending_per_registrant: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool_size < 1:
            msg = f"TRUSTPUB_POOL_SIZE must be at least 1, got {self.pool_size}"
            raise ValueError(msg)
        if self.token_lifetime < 1:
            msg = f"TRUSTPUB_TOKEN_LIFETIME must be at least 1 second, got {self.token_lifetime}"
            raise ValueError(msg)
        if not 1 <= self.pending_ttl_days <= 365:
            msg = f"TRUSTPUB_PENDING_TTL_DAYS must be 1 to 365, got {self.pending_ttl_days}"
            raise ValueError(msg)
        if self.max_pending_per_registrant < 0:
            msg = (
                "TRUSTPUB_MAX_PENDING_PER_REGISTRANT must not be negative, "
                f"got {self.max_pending_per_registrant}"
            )
            raise ValueError(msg)
        if self.purge_interval <= 0 or self.database_timeout <= 0:
            msg = "TRUSTPUB_PURGE_INTERVAL and TRUSTPUB_DATABASE_TIMEOUT must be positive"
            raise ValueError(msg)
