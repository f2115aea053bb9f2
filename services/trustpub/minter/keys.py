"""The minter's signing keys: loading, creating on first start, publishing."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwcrypto import jwk

from trustpub.messages import uploadtoken

log = structlog.get_logger("trustpub.minter")


class KeyError_(Exception):  # noqa: N801  (KeyError is a builtin)
    """The configured key material is unusable; the message says why."""


@dataclass(frozen=True)
class MinterKey:
    private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | None
    public: uploadtoken.PublicKey

    @property
    def kid(self) -> str:
        return self.public.kid

    @property
    def alg(self) -> str:
        return self.public.alg

    @property
    def public_jwk(self) -> dict[str, Any]:
        return self.public.jwk


def _from_jwk(obj: dict[str, Any], *, need_private: bool) -> MinterKey:
    try:
        key = jwk.JWK(**obj)
        public = uploadtoken.public_key(key.export_public(as_dict=True))
    except Exception as exc:
        raise KeyError_(f"not a usable minter key: {exc}") from exc
    private = key.get_op_key("sign") if key.has_private else None
    if need_private and private is None:
        raise KeyError_("the active minter key has no private part")
    return MinterKey(private=private, public=public)


def parse(text: str) -> list[MinterKey]:
    """A JWK, or a JWK Set whose first key is the active (private) one.

    Raises:
        KeyError_: the text is not JSON, or a key is unusable.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyError_("minter key is not JSON (expected a JWK or a JWK Set)") from exc
    items = doc.get("keys") if isinstance(doc, dict) and "keys" in doc else [doc]
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise KeyError_("minter key set has no keys")
    return [_from_jwk(item, need_private=(n == 0)) for n, item in enumerate(items)]


def generate() -> str:
    return uploadtoken.generate_signing_key()


def load(secret: str, path: Path | None) -> list[MinterKey]:
    """The configured keys; creates the key file (mode 0600) when it does not exist.

    Raises:
        KeyError_: the configured material is unusable.
    """
    if secret:
        return parse(secret)
    if path is None:
        log.warning("minter_key_ephemeral", reason="no TRUSTPUB_MINTER_KEY or TRUSTPUB_MINTER_KEY_FILE")
        return parse(generate())
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(generate())
        log.info("minter_key_created", path=str(path))
    return parse(path.read_text())
