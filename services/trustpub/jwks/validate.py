"""Validation of a key set (JWKS document) before it replaces the stored one.

A document is refused as a whole (:class:`KeySetRefused`) when its shape is wrong, when it
has more keys than allowed, when two keys share a ``kid`` (a verifier could not tell which
one a token means), or when no usable key remains. A key that is individually unusable is
dropped and reported, and the others are kept: issuers sometimes publish encryption keys or
keys for algorithms trustpub does not accept beside their signing keys.

Every kept key is imported eagerly (cryptography and jwcrypto), so a verifier never meets a
key it cannot use, and only its public members are kept.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwcrypto import jwk

from trustpub.messages.keys import KID_RE, KID_RULE
from trustpub.messages.text import json_type, shown, unb64

# 2048 bits is the floor of RFC 7518 §3.3 for RS256; above 4096 a verification costs much
# CPU for no gain, and no identity provider publishes such keys.
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 4096
# Only F4: a small exponent (e = 3) is the precondition of several signature forgeries.
RSA_EXPONENT = 65537

# Members that only a private or symmetric key has (RFC 7518 §6.3.2, §6.2.2, §6.4).
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
# crv -> (curve, coordinate length in bytes, the one algorithm that uses it)
_CURVES: dict[str, tuple[ec.EllipticCurve, int, str]] = {
    "P-256": (ec.SECP256R1(), 32, "ES256"),
    "P-384": (ec.SECP384R1(), 48, "ES384"),
}


class KeySetRefused(Exception):
    """The document as a whole is not accepted; ``reason`` says why, for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyDropped(Exception):
    """One key is unusable and left out; ``category`` is bounded (a metric label)."""

    def __init__(self, category: str, reason: str) -> None:
        super().__init__(reason)
        self.category = category
        self.reason = reason


@dataclass(frozen=True)
class DroppedKey:
    """A key left out of the set: its kid (when it had a valid one) and why."""

    kid: str
    category: str  # bounded, for a metric label: "kid", "private", "kty", "use", "alg", "key"
    reason: str


@dataclass(frozen=True)
class ValidKeys:
    """The public members of the keys that passed, and the ones that were dropped."""

    keys: list[dict[str, str]]
    dropped: list[DroppedKey] = field(default_factory=list)
    # The key set response's Cache-Control max-age (seconds), when it had one.
    max_age: float | None = None

    @property
    def kids(self) -> list[str]:
        return [k["kid"] for k in self.keys]


def validate_key_set(doc: object, *, algorithms: Collection[str], max_keys: int) -> ValidKeys:
    """Check a parsed JWKS document and keep its usable signing keys.

    ``algorithms`` are the issuer's accepted signature algorithms: a key whose ``alg`` is
    another one is dropped.

    Raises:
        KeySetRefused: not a JSON object with a ``keys`` list, more than ``max_keys`` keys,
            duplicate kids, or no usable key left.
    """
    if not isinstance(doc, dict):
        raise KeySetRefused(f"key set must be a JSON object, got {json_type(doc)}")
    raw = doc.get("keys")
    if not isinstance(raw, list):
        raise KeySetRefused(f"key set must have a 'keys' list, got {json_type(raw)}")
    if len(raw) > max_keys:
        raise KeySetRefused(f"key set has {len(raw)} keys, at most {max_keys} are accepted")
    seen: set[str] = set()
    for entry in raw:
        kid = entry.get("kid") if isinstance(entry, dict) else None
        if isinstance(kid, str):
            # Two keys under one kid: which one a token means is ambiguous, and an attacker
            # who could add one key could shadow the real one. Refuse the whole document.
            if kid in seen:
                raise KeySetRefused(f"key set has two keys with kid {_show(kid)}")
            seen.add(kid)
    keys: list[dict[str, str]] = []
    dropped: list[DroppedKey] = []
    for entry in raw:
        try:
            keys.append(public_key_members(entry, algorithms=algorithms))
        except KeyDropped as exc:
            kid = entry.get("kid") if isinstance(entry, dict) else None
            safe_kid = kid if isinstance(kid, str) and KID_RE.fullmatch(kid) else ""
            dropped.append(DroppedKey(kid=safe_kid, category=exc.category, reason=exc.reason))
    if not keys:
        detail = "; ".join(d.reason for d in dropped[:3])
        raise KeySetRefused(
            f"key set has no usable key ({len(raw)} listed, {len(dropped)} dropped{': ' if detail else ''}"
            f"{detail})"
        )
    return ValidKeys(keys=keys, dropped=dropped)


def public_key_members(entry: object, *, algorithms: Collection[str]) -> dict[str, str]:
    """The public members of one JWK, after every check.

    Raises:
        KeyDropped: the key is unusable (why is in ``reason``).
    """
    if not isinstance(entry, dict):
        raise KeyDropped("key", f"a key must be a JSON object, got {json_type(entry)}")
    kid, kty = _check_identity(entry)
    use, alg = _check_purpose(entry, kid, algorithms)
    out: dict[str, str] = {"kty": kty, "kid": kid}
    out.update(_rsa_members(entry, kid, alg) if kty == "RSA" else _ec_members(entry, kid, alg))
    if use is not None:
        out["use"] = use
    if alg is not None:
        out["alg"] = alg
    try:
        # The verifier imports keys with jwcrypto: prove here, once, that it can.
        jwk.JWK(**out).get_op_key("verify")
    except Exception as exc:  # jwcrypto raises many types; any of them means "unusable"
        raise KeyDropped("key", f"key {kid} cannot be imported: {type(exc).__name__}") from exc
    return out


def _check_identity(entry: dict[str, Any]) -> tuple[str, str]:
    kid = entry.get("kid")
    if not isinstance(kid, str) or not KID_RE.fullmatch(kid):
        raise KeyDropped("kid", f"kid must be a string of {KID_RULE}")
    kty = entry.get("kty")
    if kty == "oct":
        # A symmetric key in a public set would let anyone who reads it forge tokens.
        raise KeyDropped("kty", f"key {kid} is a symmetric (oct) key")
    # A published private key is a leak at the issuer; never store or use such material.
    private = sorted(entry.keys() & PRIVATE_MEMBERS)
    if private:
        raise KeyDropped("private", f"key {kid} carries private key members ({', '.join(private)})")
    if kty not in ("RSA", "EC"):
        raise KeyDropped("kty", f"key {kid} has kty {_show(kty)}, expected RSA or EC")
    return kid, str(kty)


def _check_purpose(
    entry: dict[str, Any], kid: str, algorithms: Collection[str]
) -> tuple[str | None, str | None]:
    use = entry.get("use")
    if use is not None and use != "sig":
        raise KeyDropped("use", f"key {kid} has use {_show(use)}, expected sig")
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise KeyDropped("use", f"key {kid} has key_ops without verify")
    alg = entry.get("alg")
    if alg is not None and (not isinstance(alg, str) or alg not in algorithms):
        allowed = ", ".join(sorted(algorithms))
        raise KeyDropped("alg", f"key {kid} has alg {_show(alg)}, expected one of {allowed}")
    return use, alg


def _rsa_members(entry: dict[str, Any], kid: str, alg: object) -> dict[str, str]:
    if alg is not None and alg not in _RSA_ALGS:
        raise KeyDropped("alg", f"key {kid} is an RSA key with alg {_show(alg)}")
    n_b64, e_b64 = entry.get("n"), entry.get("e")
    n, e = _b64_int(n_b64, kid, "n"), _b64_int(e_b64, kid, "e")
    if e != RSA_EXPONENT:
        raise KeyDropped("key", f"key {kid} has RSA exponent {e}, expected {RSA_EXPONENT}")
    bits = n.bit_length()
    if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS:
        expected = f"{RSA_MIN_BITS} to {RSA_MAX_BITS}"
        raise KeyDropped("key", f"key {kid} has a {bits}-bit RSA modulus, expected {expected}")
    try:
        rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise KeyDropped("key", f"key {kid} is not a valid RSA public key") from exc
    return {"n": str(n_b64), "e": str(e_b64)}


def _ec_members(entry: dict[str, Any], kid: str, alg: object) -> dict[str, str]:
    crv = entry.get("crv")
    spec = _CURVES.get(crv) if isinstance(crv, str) else None
    if spec is None:
        raise KeyDropped("key", f"key {kid} has crv {_show(crv)}, expected one of {', '.join(_CURVES)}")
    curve, size, curve_alg = spec
    if alg is not None and alg != curve_alg:
        raise KeyDropped("alg", f"key {kid} is a {crv} key with alg {_show(alg)}, expected {curve_alg}")
    x_b64, y_b64 = entry.get("x"), entry.get("y")
    coords = []
    for name, value in (("x", x_b64), ("y", y_b64)):
        raw = _b64(value, kid, name)
        # RFC 7518 §6.2.1.2: coordinates are the full size of the curve's field.
        if len(raw) != size:
            raise KeyDropped("key", f"key {kid}: {name} is {len(raw)} bytes, expected {size} for {crv}")
        coords.append(int.from_bytes(raw, "big"))
    try:
        # cryptography refuses a point that is not on the curve (invalid-curve attacks).
        ec.EllipticCurvePublicNumbers(coords[0], coords[1], curve).public_key()
    except ValueError as exc:
        raise KeyDropped("key", f"key {kid}: the point is not on {crv}") from exc
    return {"crv": str(crv), "x": str(x_b64), "y": str(y_b64)}


def _b64(value: object, kid: str, name: str) -> bytes:
    """Strict base64url without padding (RFC 7515 §2): canonical, so one key has one form."""
    if not isinstance(value, str) or not value:
        raise KeyDropped("key", f"key {kid}: {name} must be a base64url string")
    try:
        return unb64(value)
    except ValueError as exc:
        raise KeyDropped("key", f"key {kid}: {name} {exc}") from exc


def _b64_int(value: object, kid: str, name: str) -> int:
    return int.from_bytes(_b64(value, kid, name), "big")


def _show(value: object) -> str:
    """A value from the document, bounded, for a log line."""
    return shown(repr(value), 37)
