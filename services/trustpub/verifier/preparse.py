"""Strict, cheap checks of a compact JWT before jwcrypto sees any of it.

Everything here is pure and bounded in time by the size cap: no key, no network, no crypto.
jwcrypto alone accepts non-canonical base64 (padding, ``+/``, non-zero unused bits),
duplicate JSON keys (last one wins), ``jku``/``x5u`` headers and tokens without a ``kid``,
and crashes with TypeError/OverflowError/RecursionError on some claim shapes
(DESIGN.md, "Hostile input"), so the outer form is settled here first.

Structural failures are ``InvalidPayload("malformed JWT: ...")``, PyPI's code for a token
it cannot even decode; header policy failures are ``InvalidToken``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from trustpub.messages import InvalidPayload, InvalidToken, strictjson
from trustpub.messages.keys import KID_RE, KID_RULE
from trustpub.messages.text import json_type, shown, unb64
from trustpub.providers.issuers import Issuer

# Nesting deeper than this is refused: real tokens are flat objects (GitHub's nests nothing),
# and json/jwcrypto recurse once per level.
MAX_DEPTH = 32

_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_SEGMENT_NAMES = ("header", "payload", "signature")

# Header members a token may carry. x5t (a certificate thumbprint) is ignored: GitHub sends it.
# Everything else (jku, x5u, jwk, x5c, crit, zip, enc, b64, cty, ...) either points at key
# material the operator did not configure, changes how the token is processed, or belongs
# to JWE, and is refused.
ALLOWED_HEADERS = frozenset({"alg", "kid", "typ", "x5t"})


@dataclass(frozen=True, slots=True)
class Compact:
    """A token whose outer form passed: decoded header and payload, not yet verified."""

    header: dict[str, Any]
    payload: dict[str, Any]
    iss: str
    # ``<header>.<payload>`` as sent (canonical, so exactly what the signature covers).
    signing_input: str
    # Bytes of the decoded signature: its length is fixed by the algorithm and key, and a
    # padded one (ES256 00||r||00||s) must not verify (Wycheproof tc 379/385).
    signature_size: int = 0


def malformed(reason: str) -> InvalidPayload:
    return InvalidPayload(f"malformed JWT: {reason}")


def strict_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Decode ``raw`` as strict UTF-8 JSON that must be an object.

    Raises:
        InvalidPayload: not UTF-8, not strict JSON, too deeply nested, or not an object.
    """
    try:
        value = strictjson.loads(raw, max_depth=MAX_DEPTH)
    except strictjson.StrictJSONError as exc:
        raise malformed(f"the {what} {exc}") from None
    if not isinstance(value, dict):
        raise malformed(f"the {what} is {json_type(value)}, not a JSON object")
    return value


def _b64(segment: str, name: str) -> bytes:
    try:
        return unb64(segment)
    except ValueError as exc:
        # A refusal of the token: the message says all the cause knows.
        raise malformed(f"the {name} segment {exc}") from None


def _why_not_compact(token: str) -> str:
    if not token:
        return "the token is empty"
    parts = token.count(".") + 1
    if parts != 3:
        return f"expected 3 dot-separated segments, found {parts}"
    for name, segment in zip(_SEGMENT_NAMES, token.split("."), strict=True):
        if not segment:
            return f"the {name} segment is empty"
        if not _SEGMENT.fullmatch(segment):
            return f"the {name} segment has characters outside base64url (A-Z a-z 0-9 - _, no padding)"
    return "not a compact JWS"  # pragma: no cover  (the regex and the loop agree)


def parse(token: str, *, max_bytes: int) -> Compact:
    """Check the outer form of ``token`` and decode its header and payload.

    Raises:
        InvalidPayload: over ``max_bytes``, not three canonical base64url segments, header or
            payload not a strict JSON object, or ``iss`` missing or not a string.
    """
    # Characters, not bytes: a non-ASCII character fails the alphabet check just below anyway.
    if len(token) > max_bytes:
        raise malformed(f"the token is {len(token)} bytes long, the limit is {max_bytes}")
    match = _COMPACT.fullmatch(token)
    if match is None:
        raise malformed(_why_not_compact(token))
    h64, p64, s64 = match.groups()
    header_raw = _b64(h64, "header")
    payload_raw = _b64(p64, "payload")
    signature = _b64(s64, "signature")
    header = strict_json_object(header_raw, "header")
    payload = strict_json_object(payload_raw, "payload")
    iss = payload.get("iss")
    if not isinstance(iss, str):
        what = "no iss claim" if iss is None else f"an iss claim that is {json_type(iss)}"
        raise malformed(f"the payload has {what}, expected a string")
    return Compact(
        header=header, payload=payload, iss=iss, signing_input=f"{h64}.{p64}", signature_size=len(signature)
    )


def check_header(header: dict[str, Any], issuer: Issuer) -> tuple[str, str]:
    """The header's ``alg`` and ``kid`` once the header passed the policy.

    Raises:
        InvalidToken: a header member outside alg/kid/typ/x5t, ``typ`` other than "JWT",
            ``alg`` not pinned for ``issuer``, ``kid`` missing or not a safe string.
    """
    extra = header.keys() - ALLOWED_HEADERS
    if extra:
        names = ", ".join(f'"{shown(n, 32)}"' for n in sorted(extra)[:5])
        raise InvalidToken(
            f"JWT header {names} is not accepted: a token's header may only carry alg, kid, typ and x5t"
        )
    typ = header.get("typ", "JWT")
    if typ != "JWT":
        got = f'"{shown(typ, 32)}"' if isinstance(typ, str) else json_type(typ)
        raise InvalidToken(f'JWT header typ must be "JWT" or absent, the token carried {got}')
    alg = header.get("alg")
    expected = ", ".join(issuer.algorithms)
    if not isinstance(alg, str):
        got = "none" if alg is None else json_type(alg)
        raise InvalidToken(f"JWT header alg is missing or not a string (got {got}), expected {expected}")
    # Pinned per issuer: never "none", never HMAC (the public key would be the secret), never
    # another algorithm for the same key (Wycheproof tc 332-340).
    if alg not in issuer.algorithms:
        raise InvalidToken(
            f'JWT algorithm "{shown(alg, 32)}" is not accepted for {issuer.issuer}, expected {expected}'
        )
    kid = header.get("kid")
    if kid is None:
        # Without a kid jwcrypto would try every key of a set (Warehouse #20051).
        raise InvalidToken("JWT header has no kid: the key that signed the token must be named")
    if not isinstance(kid, str):
        raise InvalidToken(f"JWT header kid must be a string, the token carried {json_type(kid)}")
    if not KID_RE.fullmatch(kid):
        raise InvalidToken(f'JWT header kid "{shown(kid, 40)}" is not {KID_RULE}')
    return alg, kid
