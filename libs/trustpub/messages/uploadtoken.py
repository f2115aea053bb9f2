"""The upload token: ``<prefix><compact JWS>``, EdDSA (Ed25519) or ES256, and its keys.

The minter signs these; the gateway (introspection, ``/_/oidc/jwks``) and an index verify
them offline. A key's id is its RFC 7638 thumbprint, so a configured key id pins one public
key: a key set that names a pinned id over other key material is refused (:func:`public_key`).
Nothing here does I/O.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils
from jwcrypto import jwk

from trustpub.messages.errors import InvalidToken
from trustpub.messages.text import unb64
from trustpub.messages.v1 import MintStatus

MAX_TOKEN_CHARS = 8192
NOT_OURS = "not a token minted by this service"


@dataclass(frozen=True)
class PublicKey:
    """A public key that verifies upload tokens; ``jwk`` is what ``/_/oidc/jwks`` publishes."""

    kid: str
    alg: str
    key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
    jwk: dict[str, Any]

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            if isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, data)
            else:
                if len(signature) != 64:
                    return False
                der = utils.encode_dss_signature(
                    int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                )
                self.key.verify(der, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def algorithm(obj: Mapping[str, Any]) -> str:
    """The JWS algorithm of an upload-token key.

    Raises:
        ValueError: not an Ed25519 (OKP) or P-256 (EC) key.
    """
    if obj.get("kty") == "OKP" and obj.get("crv") == "Ed25519":
        return "EdDSA"
    if obj.get("kty") == "EC" and obj.get("crv") == "P-256":
        return "ES256"
    raise ValueError("upload tokens are signed with Ed25519 (OKP) or P-256 (EC) keys only")


def key_id(obj: Mapping[str, Any]) -> str:
    """The RFC 7638 thumbprint (SHA-256) of a JWK: the key id of an upload-token key.

    Raises:
        ValueError: not a usable JWK.
    """
    try:
        return str(jwk.JWK(**obj).thumbprint())
    except Exception as exc:
        raise ValueError(f"not a usable JWK: {type(exc).__name__}") from exc


def public_key(obj: Mapping[str, Any]) -> PublicKey:
    """A published key; its ``kid`` must be its own thumbprint.

    Raises:
        ValueError: not an Ed25519 or P-256 public key, or a ``kid`` that is not its thumbprint.
    """
    alg = algorithm(obj)
    public = {k: v for k, v in obj.items() if k in {"kty", "crv", "x", "y"}}
    kid = key_id(public)
    if obj.get("kid", kid) != kid:
        raise ValueError("the key id is not the key's RFC 7638 thumbprint")
    key = jwk.JWK(**public).get_op_key("verify")
    return PublicKey(kid=kid, alg=alg, key=key, jwk={**public, "kid": kid, "alg": alg, "use": "sig"})


def generate_signing_key() -> str:
    """A new Ed25519 private JWK (JSON), as the minter's key file holds it."""
    return str(jwk.JWK.generate(kty="OKP", crv="Ed25519").export_private())


def verify(  # noqa: PLR0913  (the token and everything it must match)
    token: str,
    *,
    prefix: str,
    keys: Mapping[str, PublicKey],
    issuer: str,
    audience: str,
    now: float | None = None,
) -> dict[str, Any]:
    """The claims of an upload token signed by one of ``keys``, for this issuer and audience,
    not expired.

    Raises:
        InvalidToken: not ours, tampered with, or expired.
    """
    if len(token) > MAX_TOKEN_CHARS or not token.startswith(prefix):
        raise InvalidToken(NOT_OURS)
    parts = token[len(prefix) :].split(".")
    if len(parts) != 3 or not all(parts):
        raise InvalidToken(NOT_OURS)
    try:
        header = orjson.loads(unb64(parts[0]))
        claims = orjson.loads(unb64(parts[1]))
        sig = unb64(parts[2])
    except (ValueError, orjson.JSONDecodeError):
        # A refusal to whoever presented it: what failed to decode is noise to them.
        raise InvalidToken(NOT_OURS) from None
    kid = header.get("kid") if isinstance(header, dict) else None
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None or header.get("alg") != key.alg or not isinstance(claims, dict):
        raise InvalidToken(NOT_OURS)
    if not key.verify(sig, f"{parts[0]}.{parts[1]}".encode()):
        raise InvalidToken("token signature does not verify")
    if claims.get("iss") != issuer or claims.get("aud") != audience:
        raise InvalidToken(NOT_OURS)
    exp = claims.get("exp")
    if type(exp) is not int or exp <= (time.time() if now is None else now):
        raise InvalidToken("token has expired")
    return claims


def matches_record(claims: Mapping[str, Any], status: MintStatus) -> bool:
    """Whether a verified token is still good: its mint record (the registry's sealed answer) is
    known, not revoked, and has the token's publisher, projects and expiry (DESIGN.md, "The bus
    is a trust boundary": introspection; the upload gate checks the same)."""
    return (
        status.known
        and not status.revoked
        and status.publisher_id == claims.get("sub")
        and status.projects == claims.get("projects")
        and status.expires_at == claims.get("exp")
    )
