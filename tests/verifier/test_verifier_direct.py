"""The verifier's rules, called directly (no NATS): real RSA keys, tokens signed per test.

Cases follow the corpus groups B-H (DESIGN.md, "Hostile input"). Every rejection asserts the exact error
class (so its code) and that the description says what was wrong.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from deploy.devstack.issuer import SigningKey, b64u, compact, enc_json, github_claims
from structlog.testing import capture_logs
from tests.support.services import AUDIENCE
from tests.support.verifier import H0, make_verifier, rejected, sign

from trustpub.messages import (
    InvalidPayload,
    InvalidToken,
    NotEnabled,
    Unavailable,
)
from trustpub.messages.v1 import KeySet, VerifiedToken
from trustpub.providers.issuers import ACTIVESTATE, GITHUB, GITLAB, GOOGLE, IssuerRegistry
from trustpub.verifier.config import Settings
from trustpub.verifier.keys import KeyCache
from trustpub.verifier.metrics import VerifierMetrics
from trustpub.verifier.verify import Verifier

LEEWAY = 30


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {
        GITHUB: SigningKey.generate("gh-1"),
        GITLAB: SigningKey.generate("gl-1"),
        GOOGLE: SigningKey.generate("gg-1"),
        ACTIVESTATE: SigningKey.generate("as-1"),
        "attacker": SigningKey.generate("gh-1"),  # same kid as GitHub's, other key
    }


@pytest.fixture(scope="module")
def verifier(keys: dict[str, SigningKey]) -> Verifier:
    return make_verifier(keys)


def gh(**overrides: Any) -> dict[str, Any]:
    claims = github_claims(AUDIENCE, **overrides)
    # GitHub's documented shape: nbf well before iat.
    claims.setdefault("nbf", claims["iat"] - 600)
    return claims


def jws_raw(key: SigningKey, header: bytes, payload: bytes, alg: str = "RS256") -> str:
    signing_input = f"{b64u(header)}.{b64u(payload)}"
    return f"{signing_input}.{b64u(key.sign(signing_input.encode(), alg))}"


def gh_bytes(**overrides: Any) -> bytes:
    return json.dumps(gh(**overrides), separators=(",", ":")).encode()


# -- positive controls --------------------------------------------------------------------


async def test_github_token_verifies(verifier, keys):
    claims = gh()
    token = sign(keys, claims)
    result = await verifier.verify(token)
    assert result == VerifiedToken(
        issuer=GITHUB,
        provider="github",
        claims=claims,
        token_key=claims["jti"],
        expires_at=claims["exp"],
        token_hash=hashlib.sha256(token.encode()).hexdigest(),
    )


@pytest.mark.parametrize(
    "header",
    [{"alg": "RS256", "kid": "gh-1"}, {"alg": "RS256", "kid": "gh-1", "typ": "JWT"}],
    ids=["no-typ", "no-x5t"],
)
async def test_header_variants_verify(verifier, keys, header):
    assert (await verifier.verify(sign(keys, gh(), header))).provider == "github"


@pytest.mark.parametrize(("iss", "provider"), [(GITLAB, "gitlab"), (ACTIVESTATE, "activestate")])
async def test_other_providers_verify(verifier, keys, iss, provider):
    claims = gh(issuer=iss)
    token = sign(keys, claims, {"alg": "RS256", "kid": keys[iss].kid, "typ": "JWT"}, key=iss)
    result = await verifier.verify(token)
    assert (result.issuer, result.provider, result.token_key) == (iss, provider, claims["jti"])


async def test_within_leeway_verifies(verifier, keys):
    now = int(time.time())
    # Expired 28 s ago, issued 2 s "in the future": both inside the 30 s leeway.
    assert await verifier.verify(sign(keys, gh(now=now, exp=now - LEEWAY + 2, iat=now - 300)))
    assert await verifier.verify(sign(keys, gh(now=now, iat=now + LEEWAY - 5, nbf=now + LEEWAY - 5)))


async def test_google_token_without_jti_is_keyed_by_its_signing_input(verifier, keys):
    now = int(time.time())
    claims = {
        "iss": GOOGLE,
        "aud": AUDIENCE,
        "azp": "1122",
        "email": "pub@proj.iam.gserviceaccount.com",
        "email_verified": True,
        "sub": "1122334455",
        "iat": now,
        "exp": now + 3600,
    }
    token = sign(keys, claims, {"alg": "RS256", "kid": "gg-1", "typ": "JWT"}, key=GOOGLE)
    result = await verifier.verify(token)
    signing_input = token.rsplit(".", 1)[0]
    assert result.provider == "google"
    assert result.token_key == "sha256:" + hashlib.sha256(signing_input.encode()).hexdigest()
    assert result.expires_at == now + 3600


# -- issuer -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "iss",
    [
        GITHUB + "/",
        "https://TOKEN.actions.githubusercontent.com",
        "http://token.actions.githubusercontent.com",
        GITHUB + ".evil.test",
        "https://token.actions.githubusercontent.com@127.0.0.1:9",
        GITHUB + "/../x",
        GITHUB + "/acme-enterprise",
        GITHUB + " ",
        GITHUB + "\u0000",
        "accounts.google.com",
        "http://127.0.0.1:9",
    ],
)
async def test_unknown_issuers_are_refused_without_io(keys, iss):
    calls: list[tuple[str, str]] = []

    async def refresh(issuer: str, kid: str) -> KeySet:
        calls.append((issuer, kid))
        raise AssertionError  # never reached: an unknown issuer causes no I/O

    issuers = IssuerRegistry.load(None)
    verifier = Verifier(Settings(audience=AUDIENCE), issuers, KeyCache(issuers, refresh=refresh))
    description = await rejected(verifier, sign(keys, gh(issuer=iss), key="attacker"), InvalidPayload)
    assert description.startswith('unknown trusted publishing issuer "')
    assert calls == []


async def test_unknown_issuer_message_is_cut_and_escaped(verifier, keys):
    description = await rejected(
        verifier, sign(keys, gh(issuer="https://x.test/" + "a" * 500)), InvalidPayload
    )
    assert description == f'unknown trusted publishing issuer "https://x.test/{"a" * 185}..."'
    description = await rejected(verifier, sign(keys, gh(issuer="evil\u0000\n")), InvalidPayload)
    assert description == 'unknown trusted publishing issuer "evil\\x00\\n"'


@pytest.mark.parametrize("iss", [None, 123, [GITHUB], {"u": GITHUB}])
async def test_iss_missing_or_not_a_string_is_malformed(verifier, keys, iss):
    claims = gh()
    if iss is None:
        del claims["iss"]
    else:
        claims["iss"] = iss
    description = await rejected(verifier, sign(keys, claims), InvalidPayload)
    assert description.startswith("malformed JWT: the payload has ")
    assert "iss" in description


async def test_duplicate_iss_is_malformed(verifier, keys):
    payload = gh_bytes(issuer="http://127.0.0.1:9")[:-1] + f',"iss":"{GITHUB}"}}'.encode()
    token = jws_raw(keys["attacker"], b'{"alg":"RS256","kid":"gh-1"}', payload)
    assert (
        await rejected(verifier, token, InvalidPayload)
        == 'malformed JWT: the payload is not strict JSON: duplicate key "iss"'
    )


async def test_not_enabled_globally(keys):
    verifier = make_verifier(keys, enabled=False)
    description = await rejected(verifier, sign(keys, gh()), NotEnabled)
    assert description == "github trusted publishing functionality not enabled"
    # The issuer is still checked first, as PyPI does.
    await rejected(verifier, sign(keys, gh(issuer="https://evil.test")), InvalidPayload)


async def test_not_enabled_per_provider(keys):
    verifier = make_verifier(keys, disabled=("github",))
    description = await rejected(verifier, sign(keys, gh()), NotEnabled)
    assert description == "github trusted publishing functionality not enabled"
    token = sign(keys, gh(issuer=GITLAB), {"alg": "RS256", "kid": "gl-1"}, key=GITLAB)
    assert (await verifier.verify(token)).provider == "gitlab"


# -- time ---------------------------------------------------------------------------------


async def test_expired(verifier, keys):
    now = int(time.time())
    description = await rejected(verifier, sign(keys, gh(exp=now - LEEWAY - 1, iat=now - 300)), InvalidToken)
    assert "expired" in description


async def test_iat_in_the_future(verifier, keys):
    now = int(time.time())
    claims = gh(now=now, iat=now + LEEWAY + 5, exp=now + 300)
    del claims["nbf"]
    assert "in the future" in await rejected(verifier, sign(keys, claims), InvalidToken)


async def test_nbf_in_the_future(verifier, keys):
    now = int(time.time())
    assert "not valid before" in await rejected(verifier, sign(keys, gh(nbf=now + LEEWAY + 5)), InvalidToken)


@pytest.mark.parametrize("claim", ["exp", "iat"])
async def test_missing_time_claims(verifier, keys, claim):
    claims = gh()
    del claims[claim]
    assert await rejected(verifier, sign(keys, claims), InvalidToken) == f"the token has no {claim} claim"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("str", "a string"),
        (1e300, "a number with a fraction"),
        ("float", "a number with a fraction"),
        (True, "a boolean"),
        (None, "null"),
        ([1], "an array"),
    ],
)
@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
async def test_time_claims_of_the_wrong_type(verifier, keys, claim, value, shown):
    now = int(time.time())
    if value == "str":
        value = str(now + 300)
    elif value == "float":
        value = now + 300.5
    claims = gh()
    claims[claim] = value
    description = await rejected(verifier, sign(keys, claims), InvalidToken)
    assert description == f"{claim} must be an integer (seconds since the epoch), the token carried {shown}"


@pytest.mark.parametrize("value", [2**53 + 1, -(2**41)])
async def test_time_claims_out_of_range(verifier, keys, value):
    assert "out of range" in await rejected(verifier, sign(keys, gh(exp=value)), InvalidToken)


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"9" * 5000])
async def test_non_finite_or_huge_numbers_are_malformed(verifier, keys, raw):
    payload = gh_bytes()[:-1] + b',"exp2":' + raw + b"}"
    description = await rejected(
        verifier, jws_raw(keys[GITHUB], b'{"alg":"RS256","kid":"gh-1"}', payload), InvalidPayload
    )
    assert description.startswith("malformed JWT: the payload ")


async def test_lifetime_above_the_issuers_maximum(verifier, keys):
    now = int(time.time())
    description = await rejected(verifier, sign(keys, gh(iat=now, exp=now + 10 * 365 * 86400)), InvalidToken)
    assert "exceeds the 3600 s allowed for https://token.actions.githubusercontent.com" in description
    # A stale iat with a fresh exp is the same (G7).
    description = await rejected(verifier, sign(keys, gh(iat=now - 2 * 86400, exp=now + 60)), InvalidToken)
    assert "lifetime" in description


# -- audience -----------------------------------------------------------------------------


async def test_wrong_audience(verifier, keys):
    description = await rejected(verifier, sign(keys, gh(aud="pypi")), InvalidToken)
    assert description == 'aud "pypi" is not this index\'s audience "trustpub-test"'
    for aud in ("https://github.com/octo-org", AUDIENCE.upper(), AUDIENCE + " ", ""):
        await rejected(verifier, sign(keys, gh(aud=aud)), InvalidToken)


@pytest.mark.parametrize("aud", [[AUDIENCE], [AUDIENCE, "other"], {"a": AUDIENCE}, 7])
async def test_audience_must_be_one_string(verifier, keys, aud):
    description = await rejected(verifier, sign(keys, gh(aud=aud)), InvalidToken)
    assert description.startswith("the token has aud as ")
    assert 'expected the single string "trustpub-test"' in description


async def test_audience_missing(verifier, keys):
    claims = gh()
    del claims["aud"]
    assert "no aud claim" in await rejected(verifier, sign(keys, claims), InvalidToken)


# -- algorithm ----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none(verifier, keys, alg):
    good = sign(keys, gh())
    header = enc_json({"alg": alg, "kid": "gh-1", "typ": "JWT"})
    payload = good.split(".")[1]
    # Signature stripped: not even three non-empty segments.
    description = await rejected(verifier, f"{header}.{payload}.", InvalidPayload)
    assert description == "malformed JWT: the signature segment is empty"
    # Signature kept: the header policy refuses the algorithm.
    description = await rejected(verifier, f"{header}.{payload}.{good.split('.')[2]}", InvalidToken)
    assert description == (
        f'JWT algorithm "{alg}" is not accepted for '
        "https://token.actions.githubusercontent.com, expected RS256"
    )


async def test_missing_alg(verifier, keys):
    description = await rejected(verifier, sign(keys, gh(), {"kid": "gh-1", "typ": "JWT"}), InvalidToken)
    assert description.startswith("JWT header alg is missing")


def _public_key_variants(key: SigningKey) -> list[bytes]:
    pub = key.private.public_key()
    spki = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pkcs1 = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return [spki, spki.rstrip(b"\n"), pkcs1, der, json.dumps(key.public_jwk()).encode()]


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_keyed_with_the_public_key(verifier, keys, alg):
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{enc_json({'alg': alg, 'kid': 'gh-1'})}.{enc_json(gh())}"
    for secret in [*_public_key_variants(keys[GITHUB]), b""]:
        mac = hmac.new(secret, signing_input.encode(), digest).digest()
        description = await rejected(verifier, f"{signing_input}.{b64u(mac)}", InvalidToken)
        assert description.startswith(f'JWT algorithm "{alg}" is not accepted')


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256"])
async def test_other_algorithm_with_the_same_key(verifier, keys, alg):
    token = sign(keys, gh(), {"alg": alg, "kid": "gh-1", "typ": "JWT"})
    description = await rejected(verifier, token, InvalidToken)
    assert description.startswith(f'JWT algorithm "{alg}" is not accepted')


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "ML-DSA-44", "RSA-OAEP", "dir", "PS512"])
async def test_other_algorithms(verifier, keys, alg):
    good = sign(keys, gh())
    header = enc_json({"alg": alg, "kid": "gh-1"})
    _, payload, sig = good.split(".")
    await rejected(verifier, f"{header}.{payload}.{sig}", InvalidToken)


# -- key selection headers ----------------------------------------------------------------


async def test_missing_kid(verifier, keys):
    description = await rejected(verifier, sign(keys, gh(), {"alg": "RS256", "typ": "JWT"}), InvalidToken)
    assert description == "JWT header has no kid: the key that signed the token must be named"


@pytest.mark.parametrize(
    "kid",
    [
        "a\nb",
        "\u0000",
        "\u001b[2J",
        "k\u00e9y",  # not ASCII
        "\u212aey",  # Kelvin sign
        "tab\there",
        "",
        "A" * 129,
        "A" * 10000,
    ],
)
async def test_kid_with_bad_characters_or_length(verifier, keys, kid):
    description = await rejected(verifier, sign(keys, gh(), {"alg": "RS256", "kid": kid}), InvalidToken)
    assert description.startswith("JWT header kid ")
    assert "is not 1 to 128 printable ASCII characters" in description
    assert "\n" not in description
    assert "\u001b" not in description


@pytest.mark.parametrize(
    "kid",
    [
        "bilbo.baggins@hobbiton.example",  # RFC 7520's example RSA key
        "nv0Qz4vJ+2k/xw3Q8Lc1ZQ==",  # base64 with + / =, as hosted issuers use
        "key 1 (2026)",
        "~!#$%^&*()[]{}<>?,;:'\"\\|`",
        "A" * 128,
    ],
)
async def test_any_printable_ascii_kid_is_a_key_id(keys, kid):
    # RFC 7517 allows any string: a self-managed issuer with such key ids can publish.
    key = SigningKey(kid=kid, private=keys[GITHUB].private)
    verifier = make_verifier({**keys, GITHUB: key})
    token = compact(key, {"alg": "RS256", "kid": kid, "typ": "JWT"}, gh())
    result = await verifier.verify(token)
    assert result.issuer == GITHUB


@pytest.mark.parametrize(
    "kid",
    [
        "../../../../../../dev/null",
        "/dev/null",
        "..\\..\\windows\\win.ini",
        "x' UNION SELECT '1';--",
        "*)(uid=*",
        "|sleep 10",
        "$(sleep 10)",
        "https://attacker.example/keys",
    ],
)
async def test_a_hostile_printable_kid_is_only_a_key_it_does_not_know(verifier, keys, kid):
    # Only a lookup key: never a path, a URL or a query; quoted wherever it is shown.
    description = await rejected(verifier, sign(keys, gh(), {"alg": "RS256", "kid": kid}), InvalidToken)
    assert description.startswith("key id ")
    assert "is not among the published keys of" in description


async def test_unknown_kid(verifier, keys):
    description = await rejected(verifier, sign(keys, gh(), {**H0, "kid": "rotated-2"}), InvalidToken)
    assert description == (
        'key id "rotated-2" is not among the published keys of https://token.actions.githubusercontent.com'
    )


# -- signature ----------------------------------------------------------------------------


async def test_signed_by_another_key_with_the_same_kid(verifier, keys):
    description = await rejected(verifier, sign(keys, gh(), key="attacker"), InvalidToken)
    assert description == (
        'the signature does not verify with key "gh-1" of https://token.actions.githubusercontent.com'
    )


async def test_cross_issuer_key(verifier, keys):
    # GitLab's key and kid on a GitHub token: GitHub's set has no "gl-1".
    await rejected(verifier, sign(keys, gh(), {"alg": "RS256", "kid": "gl-1"}, key=GITLAB), InvalidToken)


async def test_tampered_payload_or_short_signature(verifier, keys):
    token = sign(keys, gh())
    header, _, sig = token.split(".")
    other = enc_json(gh(repository="evil-org/demo"))
    assert "signature does not verify" in await rejected(verifier, f"{header}.{other}.{sig}", InvalidToken)
    short = b64u(base64.urlsafe_b64decode(sig + "==")[:-1])
    assert "signature does not verify" in await rejected(
        verifier, f"{header}.{token.split('.')[1]}.{short}", InvalidToken
    )


# -- jti ----------------------------------------------------------------------------------


async def test_github_token_without_jti(verifier, keys):
    claims = gh()
    del claims["jti"]
    description = await rejected(verifier, sign(keys, claims), InvalidToken)
    assert description == "the token has no jti claim; github tokens carry a string jti"


@pytest.mark.parametrize("jti", ["", "A" * 256, "A" * 10000, "a\nb", "caf\u00e9"])
async def test_bad_jti(verifier, keys, jti):
    description = await rejected(verifier, sign(keys, gh(jti=jti)), InvalidToken)
    assert description == "jti must be 1 to 255 printable ASCII characters"


@pytest.mark.parametrize(("jti", "shown"), [(123, "an integer"), ([], "an array"), (None, "null")])
async def test_jti_not_a_string(verifier, keys, jti, shown):
    claims = gh()
    claims["jti"] = jti
    description = await rejected(verifier, sign(keys, claims), InvalidToken)
    assert description == f"the token has jti as {shown}; github tokens carry a string jti"


# -- structure and encoding ---------------------------------------------------------------


async def test_segment_counts(verifier, keys):
    token = sign(keys, gh())
    header, payload, _ = token.split(".")
    assert await rejected(verifier, f"{header}.{payload}", InvalidPayload) == (
        "malformed JWT: expected 3 dot-separated segments, found 2"
    )
    assert await rejected(verifier, token + ".x", InvalidPayload) == (
        "malformed JWT: expected 3 dot-separated segments, found 4"
    )
    assert await rejected(verifier, "", InvalidPayload) == "malformed JWT: the token is empty"


async def test_dot_flood_is_refused_fast(verifier):
    # CPU time of this thread (the event loop's), not wall time: a loaded machine may
    # deschedule the test, never make the refusal do more work.
    started = time.thread_time()
    assert await rejected(verifier, "a." * 30000 + "a", InvalidPayload) == (
        "malformed JWT: the token is 60001 bytes long, the limit is 16384"
    )
    assert await rejected(verifier, "a." * 8000 + "a", InvalidPayload) == (
        "malformed JWT: expected 3 dot-separated segments, found 8001"
    )
    assert time.thread_time() - started < 0.05


async def test_oversized_token(verifier, keys):
    token = sign(keys, gh(pad="A" * 20000))
    assert "the limit is 16384" in await rejected(verifier, token, InvalidPayload)


def _with_dash_or_underscore(keys: dict[str, SigningKey]) -> str:
    for _ in range(200):
        token = sign(keys, gh(jti=str(uuid.uuid4())))
        if "-" in token.split(".")[2] and "_" in token.split(".")[2]:
            return token
    raise AssertionError


def _flip_unused_bits(segment: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(segment) % 4 in (2, 3)  # the last character has unused low bits
    flipped = segment[:-1] + alphabet[alphabet.index(segment[-1]) ^ 1]
    # Same bytes, different string: exactly the malleability jwcrypto accepts.
    assert base64.urlsafe_b64decode(flipped + "==") == base64.urlsafe_b64decode(segment + "==")
    return flipped


async def test_non_canonical_base64_variants(verifier, keys):
    token = _with_dash_or_underscore(keys)
    header, payload, sig = token.split(".")
    assert await verifier.verify(token)  # the original is fine
    variants = {
        "padded signature": f"{header}.{payload}.{sig}==",
        "padded header": f"{header}=.{payload}.{sig}",
        "standard alphabet": f"{header}.{payload}.{sig.replace('-', '+').replace('_', '/')}",
        "unused bits": f"{header}.{payload}.{_flip_unused_bits(sig)}",
        "space": f"{header}.{payload[:10]} {payload[10:]}.{sig}",
    }
    for name, variant in variants.items():
        description = await rejected(verifier, variant, InvalidPayload)
        assert description.startswith("malformed JWT: the "), name
    description = await rejected(verifier, variants["unused bits"], InvalidPayload)
    assert (
        description
        == "malformed JWT: the signature segment is not canonical base64url (non-zero unused bits)"
    )


async def test_non_canonical_payload_bits(verifier, keys):
    for pad in range(4):
        token = sign(keys, gh(pad="x" * pad))
        header, payload, sig = token.split(".")
        if len(payload) % 4 in (2, 3):
            description = await rejected(
                verifier, f"{header}.{_flip_unused_bits(payload)}.{sig}", InvalidPayload
            )
            assert (
                description
                == "malformed JWT: the payload segment is not canonical base64url (non-zero unused bits)"
            )
            return
    raise AssertionError


async def test_duplicate_header_keys(verifier, keys):
    token = jws_raw(keys[GITHUB], b'{"alg":"none","alg":"RS256","kid":"gh-1"}', gh_bytes())
    description = await rejected(verifier, token, InvalidPayload)
    assert description == 'malformed JWT: the header is not strict JSON: duplicate key "alg"'


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (b"\xff\xfe", "the header is not UTF-8"),
        (b"[1]", "the header is an array, not a JSON object"),
        (b"null", "the header is null, not a JSON object"),
        (b"{", "the header is not JSON (Expecting property name enclosed in double quotes)"),
        (b'\xef\xbb\xbf{"alg":"RS256","kid":"gh-1"}', "the header is not JSON (Expecting value)"),
    ],
)
async def test_header_not_a_json_object(verifier, keys, header, why):
    token = jws_raw(keys[GITHUB], header, gh_bytes())
    assert await rejected(verifier, token, InvalidPayload) == f"malformed JWT: {why}"


@pytest.mark.parametrize(
    ("payload", "shown"),
    [(b"[1,2]", "an array"), (b'"s"', "a string"), (b"null", "null"), (b"7", "an integer")],
)
async def test_payload_not_an_object(verifier, keys, payload, shown):
    token = jws_raw(keys[GITHUB], b'{"alg":"RS256","kid":"gh-1"}', payload)
    assert (
        await rejected(verifier, token, InvalidPayload)
        == f"malformed JWT: the payload is {shown}, not a JSON object"
    )


@pytest.mark.parametrize("depth", [33, 2000, 5000])
async def test_deep_nesting(verifier, keys, depth):
    payload = gh_bytes()[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"
    token = jws_raw(keys[GITHUB], b'{"alg":"RS256","kid":"gh-1"}', payload)
    assert (
        await rejected(verifier, token, InvalidPayload)
        == "malformed JWT: the payload nests deeper than 32 levels"
    )


async def test_nesting_up_to_the_limit_and_brackets_in_strings_are_fine(verifier, keys):
    claims = gh(x=json.loads("[" * 31 + "]" * 31), y="[[[[{{{{" * 10)
    assert (await verifier.verify(sign(keys, claims))).claims["y"] == "[[[[{{{{" * 10


async def test_lone_surrogate_escape(verifier, keys):
    payload = gh_bytes()[:-1] + b',"x":"\\ud800"}'
    token = jws_raw(keys[GITHUB], b'{"alg":"RS256","kid":"gh-1"}', payload)
    assert "surrogate" in await rejected(verifier, token, InvalidPayload)
    # A proper pair is fine.
    payload = gh_bytes()[:-1] + b',"x":"\\ud83d\\ude00"}'
    assert (await verifier.verify(jws_raw(keys[GITHUB], b'{"alg":"RS256","kid":"gh-1"}', payload))).claims[
        "x"
    ] == "\U0001f600"


async def test_jws_json_serialization_and_jwe(verifier, keys):
    token = sign(keys, gh())
    header, payload, sig = token.split(".")
    as_json = json.dumps({"protected": header, "payload": payload, "signature": sig})
    await rejected(verifier, as_json, InvalidPayload)
    with_two_dots = json.dumps(
        {"protected": header, "header": {"kid": "a.b.c"}, "payload": payload, "signature": sig}
    )
    assert with_two_dots.count(".") == 2
    await rejected(verifier, with_two_dots, InvalidPayload)
    jwe_like = enc_json({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "gh-1"}) + ".AAAA.AAAA.AAAA.AAAA"
    await rejected(verifier, jwe_like, InvalidPayload)


GARBAGE = [
    ".",
    "..",
    "a.b.c",
    "a.b.",
    "\x00",
    "\u00e9.\u00e9.\u00e9",
    "eyJ.eyJ.x",
    "e30.e30.e30",  # {} . {} . garbage signature
    "e30.eyJpc3MiOjF9.AAAA",
    "A" * 16384,
    "=.=.=",
    "a\n.b.c",
    " " + "a.b.c",
    "\ud800.a.b",
    "AAAA.AAAA.AAAA",
]


@pytest.mark.parametrize("token", GARBAGE)
async def test_garbage_raises_only_trustpub_errors(verifier, token):
    caught: BaseException | None = None
    try:
        await verifier.verify(token)
    except BaseException as exc:  # noqa: BLE001  (the point: whatever escapes is checked below)
        caught = exc
    assert isinstance(caught, InvalidPayload | InvalidToken), repr(caught)
    assert caught.description
    assert token not in caught.description or len(token) < 4


async def test_jwcrypto_failures_are_wrapped(keys):
    # A well-formed token whose header passes our policy but whose signature bytes are
    # nonsense for RSA: whatever jwcrypto raises must become invalid-token.
    verifier = make_verifier(keys)
    token = sign(keys, gh())
    header, payload, _ = token.split(".")
    for sig in ("AA", "AAAA", b64u(b"\x00" * 512)):
        await rejected(verifier, f"{header}.{payload}.{sig}", InvalidToken)


# -- keys ---------------------------------------------------------------------------------


async def test_no_key_set_for_the_issuer_is_unavailable(keys):
    issuers = IssuerRegistry.load(None)
    verifier = Verifier(Settings(audience=AUDIENCE), issuers, KeyCache(issuers))
    description = await rejected(verifier, sign(keys, gh()), Unavailable)
    assert description == "keys of https://token.actions.githubusercontent.com are unavailable"


def _metric(metrics_registry, name: str, labels: dict[str, str]) -> float | None:
    return metrics_registry.get_sample_value(name, labels)


async def test_key_set_replaced_wholesale_and_bad_keys_skipped(keys):
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    registry = CollectorRegistry()
    metrics = VerifierMetrics(registry)
    issuers = IssuerRegistry.load(None)
    cache = KeyCache(issuers, metrics=metrics)
    small = SigningKey.generate("small", bits=1024)
    ec_key = SigningKey.generate("ec-1", ec_key=True)
    private = keys[GITLAB].public_jwk() | {"kid": "priv", "d": "AAAA"}
    docs = [
        keys[GITHUB].public_jwk(),
        small.public_jwk(),  # RSA-1024
        ec_key.public_jwk(),  # ES256 key for an RS256 issuer
        keys[GITLAB].public_jwk() | {"kid": "rs384", "alg": "RS384"},
        keys[GITLAB].public_jwk() | {"kid": "enc", "use": "enc"},
        private,
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        keys[GITLAB].public_jwk() | {"kid": "bad\nkid"},
        keys[GITLAB].public_jwk() | {"kid": "gh-1"},  # duplicate kid: the first wins
        "not a key",
    ]
    with capture_logs() as logs:
        assert cache.apply(KeySet(issuer=GITHUB, keys=docs, fetched_at=time.time() - 300))
    assert cache.kids(GITHUB) == {"gh-1"}
    assert sum(1 for e in logs if e["event"] == "key_skipped") == 9
    assert _metric(registry, "trustpub_verifier_keys", {"issuer": GITHUB}) == 1
    verifier = Verifier(Settings(audience=AUDIENCE), issuers, cache)
    assert await verifier.verify(sign(keys, gh()))

    # A newer set replaces the old one: gh-1 is withdrawn and stops verifying.
    rotated = SigningKey.generate("gh-2")
    assert cache.apply(KeySet(issuer=GITHUB, keys=[rotated.public_jwk()], fetched_at=time.time() - 100))
    assert cache.kids(GITHUB) == {"gh-2"}
    await rejected(verifier, sign(keys, gh()), InvalidToken)
    assert await verifier.verify(compact(rotated, {"alg": "RS256", "kid": "gh-2"}, gh()))
    # An older set arriving late is ignored.
    assert not cache.apply(
        KeySet(issuer=GITHUB, keys=[keys[GITHUB].public_jwk()], fetched_at=time.time() - 200)
    )
    assert cache.kids(GITHUB) == {"gh-2"}
    # A set for an issuer that is not configured is ignored.
    assert not cache.apply(
        KeySet(issuer="https://evil.test", keys=[rotated.public_jwk()], fetched_at=time.time())
    )


async def test_refresh_is_single_flight_and_fills_the_cache(keys):
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    registry = CollectorRegistry()
    metrics = VerifierMetrics(registry)
    calls: list[tuple[str, str]] = []
    rotated = SigningKey.generate("gh-new")

    # The stand-in for the jwks service's refresh endpoint (the NATS wiring is tested over NATS).
    async def refresh(issuer: str, kid: str) -> KeySet:
        calls.append((issuer, kid))
        await asyncio.sleep(0.05)
        return KeySet(
            issuer=issuer, keys=[keys[GITHUB].public_jwk(), rotated.public_jwk()], fetched_at=time.time()
        )

    issuers = IssuerRegistry.load(None)
    cache = KeyCache(issuers, refresh=refresh, metrics=metrics)
    cache.apply(KeySet(issuer=GITHUB, keys=[keys[GITHUB].public_jwk()], fetched_at=time.time() - 10))
    verifier = Verifier(Settings(audience=AUDIENCE), issuers, cache, metrics=metrics)
    tokens = [compact(rotated, {"alg": "RS256", "kid": "gh-new"}, gh()) for _ in range(10)]
    results = await asyncio.wait_for(asyncio.gather(*(verifier.verify(t) for t in tokens)), 5)
    assert len(results) == 10
    assert calls == [(GITHUB, "gh-new")]
    assert _metric(registry, "trustpub_verifier_key_refresh_total", {"issuer": GITHUB, "result": "ok"}) == 1
    # Still unknown after a refresh: the token's fault.
    description = await rejected(verifier, sign(keys, gh(), {**H0, "kid": "gh-gone"}), InvalidToken)
    assert description.startswith('key id "gh-gone" is not among the published keys')
    assert len(calls) == 2


async def test_refresh_failure_is_unavailable(keys):
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    registry = CollectorRegistry()
    metrics = VerifierMetrics(registry)

    async def refresh(issuer: str, kid: str) -> KeySet:
        await asyncio.sleep(0.02)
        raise Unavailable("jwks.refresh did not answer within 4.0 s")

    issuers = IssuerRegistry.load(None)
    verifier = Verifier(
        Settings(audience=AUDIENCE),
        issuers,
        KeyCache(issuers, refresh=refresh, metrics=metrics),
        metrics=metrics,
    )
    token = sign(keys, gh(), {**H0, "kid": "gh-9"})
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(verifier.verify(token) for _ in range(5)), return_exceptions=True), 5
    )
    assert all(type(o) is Unavailable for o in outcomes)
    assert {o.description for o in outcomes} == {f"keys of {GITHUB} are unavailable"}
    assert (
        _metric(registry, "trustpub_verifier_key_refresh_total", {"issuer": GITHUB, "result": "unavailable"})
        == 1
    )
    assert (
        _metric(
            registry,
            "trustpub_verify_total",
            {"provider": "github", "outcome": "error", "code": "unavailable"},
        )
        == 5
    )


class _Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


async def test_a_stale_key_set_is_refreshed_or_refused(keys):
    """Past the staleness bound a known kid asks for the whole set again (kid ""); while the
    set stays that old, the issuer's tokens are unavailable, not checked against old keys."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    registry = CollectorRegistry()
    metrics = VerifierMetrics(registry)
    clock = _Clock()
    fetched = clock()
    calls: list[tuple[str, str]] = []

    async def refresh(issuer: str, kid: str) -> KeySet:
        calls.append((issuer, kid))
        return KeySet(issuer=issuer, keys=[keys[GITHUB].public_jwk()], fetched_at=fetched, checked_at=clock())

    issuers = IssuerRegistry.load(None)
    cache = KeyCache(issuers, refresh=refresh, metrics=metrics, max_age=100.0, now=clock)
    cache.apply(KeySet(issuer=GITHUB, keys=[keys[GITHUB].public_jwk()], fetched_at=clock()))
    verifier = Verifier(Settings(audience=AUDIENCE), issuers, cache, metrics=metrics)
    assert await verifier.verify(sign(keys, gh()))
    assert cache.usable(GITHUB)

    clock.t += 100  # exactly at the bound: still usable, no refresh
    assert await verifier.verify(sign(keys, gh()))
    assert calls == []
    assert _metric(registry, "trustpub_verifier_keyset_age_seconds", {"issuer": GITHUB}) == 100

    clock.t += 1
    assert not cache.usable(GITHUB)
    description = await rejected(verifier, sign(keys, gh()), Unavailable)
    assert description == (f"keys of {GITHUB} are stale: last fetched 101 s ago, more than the 100 s allowed")
    assert calls == [(GITHUB, "")]
    assert _metric(registry, "trustpub_verifier_stale_keys_total", {"issuer": GITHUB}) == 1
    # An unknown kid in a stale set: unavailable too (nobody can say it is not published).
    await rejected(verifier, sign(keys, gh(), {**H0, "kid": "gh-9"}), Unavailable)
    assert calls[-1] == (GITHUB, "gh-9")

    # The jwks service fetched again: the next token refreshes and verifies.
    fetched = clock()
    assert await verifier.verify(sign(keys, gh()))
    assert cache.usable(GITHUB)
    assert _metric(registry, "trustpub_verifier_stale_keys_total", {"issuer": GITHUB}) == 2


async def test_a_stale_set_whose_refresh_fails_says_it_is_stale(keys):
    clock = _Clock()

    async def refresh(issuer: str, kid: str) -> KeySet:
        raise Unavailable("no jwks.refresh service is running")

    issuers = IssuerRegistry.load(None)
    cache = KeyCache(issuers, refresh=refresh, max_age=60.0, now=clock)
    cache.apply(KeySet(issuer=GITHUB, keys=[keys[GITHUB].public_jwk()], fetched_at=clock() - 3600))
    verifier = Verifier(Settings(audience=AUDIENCE), issuers, cache)
    description = await rejected(verifier, sign(keys, gh()), Unavailable)
    assert description.startswith(f"keys of {GITHUB} are stale: last fetched 3600 s ago")


async def test_unknown_kid_after_a_failed_fetch_is_unavailable(keys):
    """DESIGN.md, "Keys of identity providers": invalid-token only when the issuer was asked
    and does not list the kid; while its last fetch failed (last_error), an unknown kid is
    unavailable."""
    last_error = "discovery document at https://x/.well-known/openid-configuration answered HTTP 500"
    now = time.time()

    async def refresh(issuer: str, kid: str) -> KeySet:
        return KeySet(
            issuer=issuer,
            keys=[keys[GITHUB].public_jwk()],
            fetched_at=now - 60,
            checked_at=now,
            last_error=last_error,
        )

    issuers = IssuerRegistry.load(None)
    cache = KeyCache(issuers, refresh=refresh)
    cache.apply(KeySet(issuer=GITHUB, keys=[keys[GITHUB].public_jwk()], fetched_at=now - 60))
    verifier = Verifier(Settings(audience=AUDIENCE), issuers, cache)
    description = await rejected(verifier, sign(keys, gh(), {**H0, "kid": "gh-2"}), Unavailable)
    assert description == (
        f'key id "gh-2" is not among the keys held for {GITHUB}, and the last refresh of its keys failed'
    )
    # Known kids keep verifying through the outage.
    assert await verifier.verify(sign(keys, gh()))


def test_bookkeeping_updates_do_not_reimport_keys(keys):
    issuers = IssuerRegistry.load(None)
    cache = KeyCache(issuers)
    now = time.time()
    published = [keys[GITHUB].public_jwk()]
    assert cache.apply(KeySet(issuer=GITHUB, keys=published, fetched_at=now, checked_at=now))
    imported = cache.get(GITHUB, "gh-1")
    # A claim or a failed fetch moves checked_at only: the imported key object stays.
    assert cache.apply(KeySet(issuer=GITHUB, keys=list(published), fetched_at=now, checked_at=now + 5))
    assert cache.get(GITHUB, "gh-1") is imported
    # An older bookkeeping update arriving late is ignored.
    assert not cache.apply(KeySet(issuer=GITHUB, keys=published, fetched_at=now, checked_at=now + 1))


# -- what an operator sees ----------------------------------------------------------------


async def test_metrics_and_logs(keys):
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    registry = CollectorRegistry()
    verifier = make_verifier(keys, metrics=VerifierMetrics(registry))
    good = sign(keys, gh())
    bad_aud = sign(keys, gh(aud="pypi"))
    with capture_logs() as logs:
        await verifier.verify(good)
        await rejected(verifier, bad_aud, InvalidToken)
        await rejected(verifier, "x.y", InvalidPayload)
    sample = registry.get_sample_value
    assert sample("trustpub_verify_total", {"provider": "github", "outcome": "verified", "code": "none"}) == 1
    assert (
        sample(
            "trustpub_verify_total", {"provider": "github", "outcome": "rejected", "code": "invalid-token"}
        )
        == 1
    )
    assert (
        sample(
            "trustpub_verify_total", {"provider": "unknown", "outcome": "rejected", "code": "invalid-payload"}
        )
        == 1
    )
    assert sample("trustpub_verify_duration_seconds_count", {"provider": "github"}) == 2
    rejections = [e for e in logs if e["event"] == "token_rejected"]
    assert [(e["code"], e["provider"], e["log_level"]) for e in rejections] == [
        ("invalid-token", "github", "info"),
        ("invalid-payload", "unknown", "info"),
    ]
    assert rejections[0]["reason"] == 'aud "pypi" is not this index\'s audience "trustpub-test"'
    assert rejections[0]["token_hash"] == hashlib.sha256(bad_aud.encode()).hexdigest()[:16]
    assert [e["event"] for e in logs if e["log_level"] == "debug"] == ["token_verified"]
    for entry in logs:
        for value in entry.values():
            assert good not in str(value)
            assert bad_aud not in str(value)
            assert bad_aud.split(".")[2] not in str(value)


# -- settings -----------------------------------------------------------------------------


def test_settings_from_the_environment(tmp_path):
    from trustpub.runtime import ConfigError, load  # noqa: PLC0415

    settings = load(Settings, {})
    assert (settings.ops_port, settings.audience, settings.leeway, settings.max_token_bytes) == (
        9102,
        "trustpub",
        30,
        16384,
    )
    assert (settings.refresh_timeout, settings.concurrency, settings.enabled) == (4.0, 64, True)
    settings = load(
        Settings,
        {
            "TRUSTPUB_DISABLED_PROVIDERS": "google, activestate",
            "TRUSTPUB_ENABLED": "false",
            "TRUSTPUB_ISSUERS_FILE": str(tmp_path / "issuers.toml"),
        },
    )
    assert settings.disabled_providers == ("google", "activestate")
    assert settings.enabled is False
    assert settings.issuers_file == tmp_path / "issuers.toml"
    for name, value in [
        ("LEEWAY", "3600"),
        ("MAX_TOKEN_BYTES", "10"),
        ("CONCURRENCY", "0"),
        ("AUDIENCE", ""),
    ]:
        with pytest.raises(ConfigError, match=f"TRUSTPUB_{name}"):
            load(Settings, {f"TRUSTPUB_{name}": value})
