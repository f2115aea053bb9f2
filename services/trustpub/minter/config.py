"""Minter settings (``TRUSTPUB_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trustpub.runtime.config import CommonSettings, UploadTokenSettings


@dataclass(frozen=True, kw_only=True)
class Settings(CommonSettings, UploadTokenSettings):
    ops_port: int = 9104
    # The signing key: a private JWK, or a JWK Set whose first key signs and whose other
    # keys are still published (rotation). ``minter_key`` (from a Secret) wins over
    # ``minter_key_file``; a key file that does not exist is created with a new Ed25519
    # key on first start. With neither, a key is created in memory (development only:
    # tokens stop verifying when the process restarts).
    minter_key: str = ""
    minter_key_file: Path | None = None
