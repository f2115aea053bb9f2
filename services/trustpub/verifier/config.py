"""Verifier settings (``TRUSTPUB_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trustpub.runtime.config import CommonSettings


@dataclass(frozen=True, kw_only=True)
class Settings(CommonSettings):
    ops_port: int = 9102
    # The ``aud`` every token must carry, exactly (GET /_/oidc/audience tells clients).
    audience: str = "trustpub"
    # Operator-registered issuers and overrides of the built-in four (TOML).
    issuers_file: Path | None = None
    # Providers switched off (comma-separated), e.g. "google,activestate".
    disabled_providers: tuple[str, ...] = ()
    # Trusted Publishing as a whole; off answers every known issuer with not-enabled.
    enabled: bool = True
    # Clock skew allowed on exp/iat/nbf, seconds: PyPI's value.
    leeway: int = 30
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
    # Staleness bound, seconds: an issuer whose key set was last fetched longer ago than this
    # gets unavailable (503) instead of trust in keys it may have withdrawn meanwhile
    # (DESIGN.md, "Keys of identity providers": 24 h). Keep it equal to the jwks service's
    # TRUSTPUB_KEY_STALENESS.
    key_staleness: float = 86400.0

    def __post_init__(self) -> None:
        # A ValueError here becomes a ConfigError naming the problem (runtime.config.load).
        if not self.audience:
            msg = "TRUSTPUB_AUDIENCE must not be empty"
            raise ValueError(msg)
        if not 0 <= self.leeway <= 300:
            msg = f"TRUSTPUB_LEEWAY must be between 0 and 300 seconds, got {self.leeway}"
            raise ValueError(msg)
        if not 1024 <= self.max_token_bytes <= 1_000_000:
            msg = f"TRUSTPUB_MAX_TOKEN_BYTES must be between 1024 and 1000000, got {self.max_token_bytes}"
            raise ValueError(msg)
        if not 10 <= self.max_claims <= 10_000:
            msg = f"TRUSTPUB_MAX_CLAIMS must be between 10 and 10000, got {self.max_claims}"
            raise ValueError(msg)
        if not 256 <= self.max_claim_length <= self.max_token_bytes:
            msg = (
                f"TRUSTPUB_MAX_CLAIM_LENGTH must be between 256 and TRUSTPUB_MAX_TOKEN_BYTES "
                f"({self.max_token_bytes}), got {self.max_claim_length}"
            )
            raise ValueError(msg)
        if not self.refresh_timeout > 0:
            msg = f"TRUSTPUB_REFRESH_TIMEOUT must be positive, got {self.refresh_timeout}"
            raise ValueError(msg)
        if not self.key_staleness > 0:
            msg = f"TRUSTPUB_KEY_STALENESS must be positive, got {self.key_staleness}"
            raise ValueError(msg)
        if self.concurrency < 1:
            msg = f"TRUSTPUB_CONCURRENCY must be at least 1, got {self.concurrency}"
            raise ValueError(msg)
