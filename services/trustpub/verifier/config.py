"""Verifier settings (``TRUSTPUB_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from trustpub.runtime.config import (
    CommonSettings,
    ExchangeSettings,
    IssuerSettings,
    KeyStalenessSettings,
    LeewaySettings,
)


@dataclass(frozen=True, kw_only=True)
class Settings(CommonSettings, IssuerSettings, ExchangeSettings, LeewaySettings, KeyStalenessSettings):
    ops_port: int = 9102
    # GitHub tokens are about 1-2 KB; 16 KiB leaves room for large claim sets and bounds the
    # work spent on garbage.
    max_token_bytes: int = 16384
    # Members of the payload (a GitHub token has about 30) and characters of any one string in
    # the token (real claims are a few hundred at most): more is refused as malformed.
    max_claims: int = 100
    max_claim_length: int = 4096
    # How long a verification waits for the jwks service when a token names an unknown key.
    refresh_timeout: float = 4.0
    # Requests handled at once: a request waiting for a key refresh must not hold up others.
    concurrency: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(
            1024 <= self.max_token_bytes <= 1_000_000,
            f"TRUSTPUB_MAX_TOKEN_BYTES must be between 1024 and 1000000, got {self.max_token_bytes}",
        )
        self.require(
            10 <= self.max_claims <= 10_000,
            f"TRUSTPUB_MAX_CLAIMS must be between 10 and 10000, got {self.max_claims}",
        )
        self.require(
            256 <= self.max_claim_length <= self.max_token_bytes,
            f"TRUSTPUB_MAX_CLAIM_LENGTH must be between 256 and TRUSTPUB_MAX_TOKEN_BYTES "
            f"({self.max_token_bytes}), got {self.max_claim_length}",
        )
        self.require_positive("refresh_timeout")
        self.require(
            self.concurrency >= 1, f"TRUSTPUB_CONCURRENCY must be at least 1, got {self.concurrency}"
        )
