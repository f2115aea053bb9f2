"""JWT verification: outer form, issuer, header policy, claims, then jwcrypto's signature check.

Order (cheapest rejection first; nothing is trusted before the signature):

1. outer form (size, three canonical base64url segments, strict JSON) and ``iss`` routing:
   an unknown issuer is refused here, without any network I/O;
2. switched off globally or for the provider -> not-enabled (PyPI's order);
3. header policy (allowed members, pinned ``alg``, ``kid`` shape);
4. claim checks on the still unverified payload. They can only *reject*: a forged token
   learns nothing it did not write itself, and an expired or wrongly addressed token costs
   neither a key refresh nor an RSA operation;
5. the key by ``kid`` (a refresh only when it is unknown), and jwcrypto with one JWK, pinned
   ``alg``, compact serialisation only, and its own exp/iat/iss checks as a second line;
6. the claims are returned only after the signature verified. They are the dict decoded in
   step 1: the canonical encoding guarantees it is exactly what the signature covers.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any, Protocol

import structlog
from jwcrypto import jws
from jwcrypto.jwk import JWK

from trustpub.messages import InternalError, InvalidPayload, InvalidToken, NotEnabled, TrustpubError
from trustpub.messages.text import json_type, shown
from trustpub.messages.v1 import VerifiedToken
from trustpub.providers.issuers import Issuer, IssuerRegistry
from trustpub.verifier import preparse
from trustpub.verifier.config import Settings
from trustpub.verifier.metrics import VerifierMetrics

log = structlog.get_logger("trustpub.verifier")

# |value| above 2**40 s (year ~36800) is no real time: such values only serve to overflow or
# confuse comparisons in code further down.
TIME_LIMIT = 2**40
# The replay key must be usable as a database key and in logs: bounded, printable ASCII.
_JTI_RE = re.compile(r"[\x20-\x7e]{1,255}")


class KeySource(Protocol):
    """Where the verifier gets a key by issuer and kid (the KV-backed cache in the service)."""

    async def key(self, issuer: Issuer, kid: str) -> JWK:
        """The key, or InvalidToken (unknown kid) / Unavailable (keys cannot be obtained)."""
        ...


def _longest_string(value: object) -> int:
    """Characters of the longest string (member names included) in a decoded JSON value."""
    if isinstance(value, str):
        return len(value)
    longest = 0
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            longest = max(longest, len(item))
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return longest


def _int_claim(claims: dict[str, Any], name: str, *, required: bool) -> int | None:
    if name not in claims:
        if required:
            raise InvalidToken(f"the token has no {name} claim")
        return None
    value = claims[name]
    # bool is an int in Python (jwcrypto reads true as 1); floats and strings are not coerced.
    if type(value) is not int:
        raise InvalidToken(
            f"{name} must be an integer (seconds since the epoch), the token carried {json_type(value)}"
        )
    if not -TIME_LIMIT <= value <= TIME_LIMIT:
        raise InvalidToken(f"{name} is out of range (more than 2**40 seconds from the epoch)")
    return value


# Bytes of an ECDSA signature (JWS: r || s, each the size of the curve's order).
_EC_SIGNATURE_BYTES = {"ES256": 64, "ES384": 96}


def _check_signature_size(size: int, alg: str, key: JWK, kid: str) -> None:
    """The signature must have exactly its algorithm's length.

    jwcrypto splits an ECDSA signature in halves and reads each as an integer, so 00||r||00||s
    (66 bytes) verifies like r||s: one token, many strings, different replay hashes (Wycheproof
    tc 379/385). An RSA signature is as long as the modulus.
    """
    expected = _EC_SIGNATURE_BYTES.get(alg)
    if expected is None:
        public = key.get_op_key("verify")  # imported once, at key-set load: cached in the JWK
        expected = (public.key_size + 7) // 8
    if size != expected:
        raise InvalidToken(
            f'the signature does not verify: it is {size} bytes long, {alg} signatures by key "{kid}" '
            f"are {expected} bytes"
        )


class Verifier:
    """Verifies OIDC tokens of the configured issuers; no publisher matching.

    ``verify`` raises only :class:`TrustpubError` subclasses.
    """

    def __init__(
        self,
        settings: Settings,
        issuers: IssuerRegistry,
        keys: KeySource,
        *,
        metrics: VerifierMetrics | None = None,
    ) -> None:
        self._audience = settings.audience
        self._enabled = settings.enabled
        self._leeway = settings.leeway
        self._max_bytes = settings.max_token_bytes
        self._max_claims = settings.max_claims
        self._max_string = settings.max_claim_length
        self._issuers = issuers
        self._keys = keys
        self._metrics = metrics or VerifierMetrics()

    async def verify(self, token: str) -> VerifiedToken:
        """Verify ``token`` and return its claims.

        Raises:
            InvalidPayload: the token is structurally unparsable, or its issuer is unknown.
            NotEnabled: Trusted Publishing is off, globally or for the issuer's provider.
            InvalidToken: header policy, signature, audience, time or jti checks failed.
            Unavailable: the issuer's keys could not be obtained.
        """
        started = time.perf_counter()
        provider = "unknown"
        issuer: Issuer | None = None
        try:
            parsed = preparse.parse(token, max_bytes=self._max_bytes)
            issuer = self._issuer(parsed.iss)
            provider = issuer.provider
            result = await self._verify(token, parsed, issuer)
        except TrustpubError as exc:
            if issuer is not None:
                # For the gateway's audit record: whose token was refused (a configured
                # issuer only; an unknown one is quoted in the description).
                exc.context.update(issuer=issuer.issuer, provider=provider)
            self._rejected(exc, provider, token, started)
            raise
        except Exception as exc:
            log.exception("verify_failed", provider=provider)
            error = InternalError("internal error while verifying the token")
            self._rejected(error, provider, token, started)
            raise error from exc
        self._metrics.observe(provider, "verified", "none", time.perf_counter() - started)
        log.debug(
            "token_verified", provider=provider, issuer=issuer.issuer, token_hash=result.token_hash[:16]
        )
        return result

    def _issuer(self, iss: str) -> Issuer:
        issuer = self._issuers.get(iss)
        if issuer is None:
            # Exact string match, no normalisation; never any I/O for such a token.
            raise InvalidPayload(f'unknown trusted publishing issuer "{shown(iss, 200)}"')
        return issuer

    async def _verify(self, token: str, parsed: preparse.Compact, issuer: Issuer) -> VerifiedToken:
        if not (self._enabled and issuer.enabled):
            raise NotEnabled(f"{issuer.provider} trusted publishing functionality not enabled")
        alg, kid = preparse.check_header(parsed.header, issuer)
        claims = parsed.payload
        exp, jti = self._check_claims_early(claims, issuer, len(parsed.signing_input))
        key = await self._keys.key(issuer, kid)
        _check_signature_size(parsed.signature_size, alg, key, kid)
        self._check_signature(token, key, alg, kid, issuer)
        if jti is None:
            # Google tokens carry no jti: they are single-use by their signing input.
            jti = "sha256:" + hashlib.sha256(parsed.signing_input.encode("ascii")).hexdigest()
        return VerifiedToken(
            issuer=issuer.issuer,
            provider=issuer.provider,
            claims=claims,
            token_key=jti,
            expires_at=exp,
            token_hash=hashlib.sha256(token.encode("ascii")).hexdigest(),
        )

    def _check_claims_early(
        self, claims: dict[str, Any], issuer: Issuer, signed_length: int
    ) -> tuple[int, str | None]:
        """Audience, sub, times, lifetime, jti and sizes; returns exp and the jti (None for
        jti-less issuers)."""
        self._check_audience(claims)
        sub = claims.get("sub")
        if sub is not None and not isinstance(sub, str):
            # RFC 7519: a StringOrURI. Not coerced (jwcrypto refuses it too, less clearly).
            raise InvalidToken(f"sub must be a string, the token carried {json_type(sub)}")
        exp = self._check_times(claims, issuer)
        jti: str | None = None
        value = claims.get("jti")
        # Required where the platform documents it (GitHub, GitLab); elsewhere a jti that is
        # present is still the replay key and must be well formed, and an absent one means
        # the token is single-use by the hash of its signing input instead.
        if issuer.requires_jti or "jti" in claims:
            if not isinstance(value, str):
                got = "no jti claim" if "jti" not in claims else f"jti as {json_type(value)}"
                raise InvalidToken(f"the token has {got}; {issuer.provider} tokens carry a string jti")
            if not _JTI_RE.fullmatch(value):
                raise InvalidToken("jti must be 1 to 255 printable ASCII characters")
            jti = value
        self._check_sizes(claims, signed_length)
        return exp, jti

    def _check_sizes(self, claims: dict[str, Any], signed_length: int) -> None:
        """At most ``max_claims`` claims, no string longer than ``max_claim_length`` characters."""
        if len(claims) > self._max_claims:
            raise InvalidToken(f"the token carries {len(claims)} claims, the limit is {self._max_claims}")
        # A token shorter than the limit cannot hold a longer string: real tokens skip the walk.
        if signed_length <= self._max_string:
            return
        for name, value in claims.items():
            longest = max(len(name), _longest_string(value))
            if longest > self._max_string:
                raise InvalidToken(
                    f'claim "{shown(name, 40)}" holds a string of {longest} characters, '
                    f"the limit is {self._max_string}"
                )

    def _check_audience(self, claims: dict[str, Any]) -> None:
        aud = claims.get("aud")
        if not isinstance(aud, str):
            # A one-element array is refused too: a token minted for several audiences can be
            # replayed at each of them (Warehouse's strict_aud, crates.io).
            got = "no aud claim" if "aud" not in claims else f"aud as {json_type(aud)}"
            raise InvalidToken(f'the token has {got}, expected the single string "{self._audience}"')
        if aud != self._audience:
            raise InvalidToken(f'aud "{shown(aud, 100)}" is not this index\'s audience "{self._audience}"')

    def _check_times(self, claims: dict[str, Any], issuer: Issuer) -> int:
        exp = _int_claim(claims, "exp", required=True)
        iat = _int_claim(claims, "iat", required=True)
        nbf = _int_claim(claims, "nbf", required=False)
        assert exp is not None  # noqa: S101  (required=True never returns None)
        assert iat is not None  # noqa: S101
        now = time.time()
        leeway = self._leeway
        if exp + leeway < now:
            raise InvalidToken(f"the token expired {int(now) - exp} s ago (exp {exp}, leeway {leeway} s)")
        if iat > now + leeway:
            raise InvalidToken(f"iat {iat} is {iat - int(now)} s in the future (leeway {leeway} s)")
        if nbf is not None and nbf > now + leeway:
            raise InvalidToken(f"the token is not valid before {nbf}, {nbf - int(now)} s from now")
        if exp < iat:
            raise InvalidToken(f"exp {exp} is before iat {iat}")
        if exp - iat > issuer.max_lifetime:
            raise InvalidToken(
                f"the token's lifetime of {exp - iat} s (exp - iat) exceeds the {issuer.max_lifetime} s "
                f"allowed for {issuer.issuer}"
            )
        return exp

    def _check_signature(self, token: str, key: JWK, alg: str, kid: str, issuer: Issuer) -> None:
        """jwcrypto verifies the signature: one JWK (never a JWKSet: with a set and no kid it tries
        every key), the algorithm pinned to the header's, which check_header matched against the
        issuer's. The claims were checked before, on the very payload bytes the signature covers
        (preparse keeps them), so jwcrypto's JWT layer (which would parse and check them again,
        and copy them) is not used: a token the signature does not cover cannot get here."""
        try:
            signed = jws.JWS()
            signed.allowed_algs = [alg]
            # Compact serialisation only: preparse admitted exactly three canonical segments.
            signed.deserialize(token)
            signed.verify(key, alg=alg)
        # jwcrypto raises JWException subclasses but also TypeError, OverflowError,
        # RecursionError and ValueError on hostile input: every one is an invalid token.
        except jws.InvalidJWSSignature:
            raise InvalidToken(f'the signature does not verify with key "{kid}" of {issuer.issuer}') from None
        except jws.InvalidJWSOperation:
            raise InvalidToken(f'JWT algorithm "{alg}" is not accepted') from None
        except Exception as exc:  # noqa: BLE001  (see above: no jwcrypto failure may become a 500)
            raise InvalidToken(f"the token could not be verified ({type(exc).__name__})") from None

    def _rejected(self, exc: TrustpubError, provider: str, token: str, started: float) -> None:
        code = exc.code.value
        outcome = "error" if code in {"unavailable", "internal-error"} else "rejected"
        self._metrics.observe(provider, outcome, code, time.perf_counter() - started)
        fields: dict[str, Any] = {"code": code, "reason": exc.description, "provider": provider}
        if len(token) <= self._max_bytes:
            # A prefix of the hash ties the log line to the audit record; never the token.
            fields["token_hash"] = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:16]
        log.info("token_rejected", **fields)
