"""The adversarial corpus (DESIGN.md, "Hostile input") as data: one :class:`Case` per variant.

A case builds its request from a :class:`Ctx` (fresh claims with a fresh ``jti``, the cast's
keys, the attacker's address), at run time, with real keys and real crypto. The same list runs
at two levels (tests/corpus/test_corpus_direct.py and test_corpus_e2e.py); ``Expect`` says what
each level must answer.

Outcome codes: ``P`` invalid-payload, ``T`` invalid-token, ``PUB`` invalid-publisher, ``R``
invalid-reuse-token, ``NE`` not-enabled, ``OK`` minted. Where trustpub deliberately answers
otherwise than the corpus table it was drawn from, the case says why (``note``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from deploy.devstack.issuer import SigningKey, b64u, compact, enc_json
from jwcrypto import jwe, jwk
from tests.corpus.corpus_keys import (
    AS,
    AS_ACTOR,
    AS_OTHER_ACTOR,
    AUD,
    ES,
    GG,
    GH,
    GHES,
    GL,
    LEEWAY,
    OFF,
    Cast,
)

P = "invalid-payload"
T = "invalid-token"
PUB = "invalid-publisher"
R = "invalid-reuse-token"
PEND = "invalid-pending-publisher"
NE = "not-enabled"
OK = ""

H0: dict[str, Any] = {"alg": "RS256", "kid": "gh-1", "typ": "JWT", "x5t": "dGVzdA"}
MINT = "/_/oidc/mint-token"
JSON_CT = {"Content-Type": "application/json"}


# --- requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One HTTP request of a case; ``token`` is the JWT it carries (None: none extractable)."""

    body: bytes
    token: str | None
    method: str = "POST"
    path: str = MINT
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON_CT))


def body(token: str) -> bytes:
    """``BODY(t)`` of §3.1, ``{"token":"<t>"}``, JSON-escaped where the token needs it (B5)."""
    return json.dumps({"token": token}, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


def post(token: str) -> Attempt:
    return Attempt(body=body(token), token=token)


def raw(data: bytes, *, token: str | None = None, **kw: Any) -> Attempt:
    return Attempt(body=data, token=token, **kw)


# --- what each level must answer ----------------------------------------------------------

# Direct-level outcomes besides an error code: the verifier accepts the token and the
# provider's rules accept ("match") or refuse ("nomatch") it against the registered publishers;
# "verified": the verifier accepts it and matching needs the database (e2e only).
MATCH = "match"
NOMATCH = "nomatch"
VERIFIED = "verified"


@dataclass(frozen=True)
class Expect:
    code: str  # the e2e error code, "" when minted
    status: int = 0  # the e2e HTTP status; 0: 200 when minted, else 422
    fragment: str = ""  # a piece of the description, both levels
    direct: str | None = "auto"  # see above; None: the case runs end to end only

    @property
    def http_status(self) -> int:
        return self.status or (200 if self.code == OK else 422)

    @property
    def direct_outcome(self) -> str | None:
        if self.direct != "auto":
            return self.direct
        return {OK: MATCH, PUB: NOMATCH, R: None}.get(self.code, self.code)


@dataclass(frozen=True)
class Case:
    id: str
    title: str
    build: Callable[[Ctx], Attempt]
    expect: Expect
    # The legitimate token of the case (Ctx.tok0, same jti) must still mint afterwards (V2).
    legit: bool = True
    # Attempts that must succeed before the case's own (e.g. mint TOK0, then replay it).
    before: Callable[[Ctx], list[Attempt]] | None = None
    note: str = ""

    @property
    def group(self) -> str:
        return self.id[0]


# --- the context of one case -------------------------------------------------------------


@dataclass
class Ctx:
    cast: Cast
    attacker: str  # "http://127.0.0.1:<P_ATT>"
    now: int = field(default_factory=lambda: int(time.time()))
    jti: str = field(default_factory=lambda: str(uuid.uuid4()))

    def gh(self, **overrides: Any) -> dict[str, Any]:
        """``C_gh`` of §3.1 with this case's jti; ``None`` values drop a claim."""
        now = self.now
        claims: dict[str, Any] = {
            "iss": GH,
            "aud": AUD,
            "sub": "repo:octo-org/demo:environment:release",
            "repository": "octo-org/demo",
            "repository_owner": "octo-org",
            "repository_owner_id": "1001",
            "repository_id": "2002",
            "workflow_ref": "octo-org/demo/.github/workflows/release.yml@refs/tags/v1.0.0",
            "job_workflow_ref": "octo-org/demo/.github/workflows/release.yml@refs/tags/v1.0.0",
            "ref": "refs/tags/v1.0.0",
            "ref_type": "tag",
            "sha": "0123456789abcdef0123456789abcdef01234567",
            "event_name": "push",
            "environment": "release",
            "run_id": "1",
            "jti": self.jti,
            "nbf": now - 600,
            "iat": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def gl(self, **overrides: Any) -> dict[str, Any]:
        now = self.now
        claims: dict[str, Any] = {
            "iss": GL,
            "aud": AUD,
            "sub": "project_path:grp/sub/proj:ref_type:tag:ref:v1",
            "project_path": "grp/sub/proj",
            "namespace_path": "grp/sub",
            "namespace_id": "31",
            "project_id": "32",
            "ci_config_ref_uri": "gitlab.com/grp/sub/proj//.gitlab-ci.yml@refs/tags/v1",
            "ref_path": "refs/tags/v1",
            "ref": "v1",
            "ref_type": "tag",
            "sha": "89abcdef0123456789abcdef0123456789abcdef",
            "environment": "production",
            "pipeline_source": "push",
            "jti": self.jti,
            "nbf": now - 5,
            "iat": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def gg(self, **overrides: Any) -> dict[str, Any]:
        now = self.now
        claims: dict[str, Any] = {
            "iss": GG,
            "aud": AUD,
            "azp": "1122",
            "email": "pub@proj.iam.gserviceaccount.com",
            "email_verified": True,
            "sub": "1122334455",
            "iat": now,
            "exp": now + 3600,
            # Google tokens have no jti and are single-use by their hash: two cases signing the
            # same claims in the same second would share one. A claim the rules ignore keeps
            # each case's token its own.
            "corpus_case": self.jti,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def as_(self, **overrides: Any) -> dict[str, Any]:
        now = self.now
        claims: dict[str, Any] = {
            "iss": AS,
            "aud": AUD,
            "sub": "org:acme:project:tool",
            "organization": "acme",
            "project": "tool",
            "actor_id": AS_ACTOR,
            "builder": "pypi-publisher",
            "jti": self.jti,
            "iat": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    @property
    def tok0(self) -> str:
        """``TOK0``: the legitimate token of this case (P_gh accepts it)."""
        return jws(self.cast.gh, H0, self.gh())

    def gh_token(self, header: dict[str, Any] | None = None, **overrides: Any) -> str:
        return jws(self.cast.gh, H0 if header is None else header, self.gh(**overrides))


def jws(key: SigningKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """``jws(K, H, C)`` of §3.1 (compact() signs RS256 unless the header names RS384/RS512/PS256/ES256)."""
    return compact(key, header, claims)


def jws_raw(key: SigningKey, header: bytes, payload: bytes, alg: str | None = None) -> str:
    signing_input = f"{b64u(header)}.{b64u(payload)}"
    return f"{signing_input}.{b64u(key.sign(signing_input.encode(), alg))}"


def claims_bytes(claims: dict[str, Any]) -> bytes:
    return json.dumps(claims, separators=(",", ":")).encode()


def hs(alg: str, secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{enc_json(header)}.{enc_json(claims)}"
    return f"{signing_input}.{b64u(hmac.new(secret, signing_input.encode(), digest).digest())}"


def replace_segment(token: str, index: int, value: str) -> str:
    parts = token.split(".")
    parts[index] = value
    return ".".join(parts)


def flip_unused_bits(segment: str) -> str:
    """The same bytes, a different string: set the unused low bits of the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 4, 3: 2}.get(len(segment) % 4, 0)  # bits the last character carries beyond the data
    last = alphabet.index(segment[-1])
    assert unused, "segment length leaves no unused bits"
    return segment[:-1] + alphabet[last | ((1 << unused) - 1)]


def b64_std(segment: str) -> str:
    return segment.replace("-", "+").replace("_", "/")


def public_pem(key: SigningKey, fmt: str) -> bytes:
    pub = key.private.public_key()
    if fmt == "spki":
        return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if fmt == "pkcs1":
        return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def es_signature(token: str) -> tuple[bytes, bytes]:
    sig = base64.urlsafe_b64decode(token.split(".")[2] + "==")
    return sig[:32], sig[32:]


def jwe_compact(key: SigningKey, claims: dict[str, Any]) -> str:
    pub = jwk.JWK.from_pyca(key.private.public_key())
    token = jwe.JWE(claims_bytes(claims), protected={"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": key.kid})
    token.add_recipient(pub)
    return str(token.serialize(compact=True))


def jwe_zip_bomb() -> str:
    """A JWE-shaped token whose "ciphertext" inflates to 50 MB (never decrypted, never inflated)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = b"A" * 1_000_000
    data = b"".join(deflate.compress(chunk) for _ in range(50)) + deflate.flush()
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "zip": "DEF", "kid": "gh-1"}
    return ".".join(
        [enc_json(header), b64u(b"\x00" * 256), b64u(b"\x00" * 12), b64u(data), b64u(b"\x00" * 16)]
    )


def deflated_jws(ctx: Ctx) -> str:
    claims = json.dumps({**ctx.gh(), "pad": "A" * 10_000_000}).encode()
    data = zlib.compress(claims, 9)[2:-4]  # raw DEFLATE
    header = {"alg": "RS256", "kid": "gh-1", "zip": "DEF"}
    return jws_raw(ctx.cast.att, json.dumps(header).encode(), data)


def off_curve_jwk(key: SigningKey) -> dict[str, Any]:
    assert isinstance(key.private, ec.EllipticCurvePrivateKey)
    doc = jwk.JWK.from_pyca(key.private.public_key()).export_public(as_dict=True)
    y = bytearray(base64.urlsafe_b64decode(doc["y"] + "=="))
    y[-1] ^= 1
    doc["y"] = b64u(bytes(y))
    return dict(doc)


# --- the table ------------------------------------------------------------------------------

CASES: list[Case] = []


def case(
    cid: str,
    title: str,
    build: Callable[[Ctx], Attempt],
    code: str,
    *,
    status: int = 0,
    fragment: str = "",
    direct: str | None = "auto",
    legit: bool = True,
    before: Callable[[Ctx], list[Attempt]] | None = None,
    note: str = "",
) -> None:
    assert all(c.id != cid for c in CASES), cid
    CASES.append(
        Case(cid, title, build, Expect(code, status, fragment, direct), legit=legit, before=before, note=note)
    )


def tok(build: Callable[[Ctx], str]) -> Callable[[Ctx], Attempt]:
    """A case whose request is ``BODY(token)`` with the token ``build`` makes."""
    return lambda ctx: post(build(ctx))


# A — transport and body (gateway; end to end only).
case(
    "A1",
    "form-encoded body",
    lambda c: raw(b"token=" + c.tok0.encode(), headers={"Content-Type": "application/x-www-form-urlencoded"}),
    P,
    fragment="request body is not JSON",
    direct=None,
)
case(
    "A2a",
    "JSON body sent as text/plain",
    lambda c: raw(body(c.tok0), token=c.tok0, headers={"Content-Type": "text/plain"}),
    OK,
    direct=None,
    legit=False,
    note="decision: the Content-Type is not consulted, as PyPI (pydantic parses request.body); "
    "`curl -d` (form-urlencoded) is what PyPI's GitLab instructions use, so a 415 would break them",
)
case(
    "A2b",
    "JSON body without a Content-Type",
    lambda c: raw(body(c.tok0), token=c.tok0, headers={}),
    OK,
    direct=None,
    legit=False,
    note="as A2a",
)
case("A3", "empty body", lambda _: raw(b""), P, fragment="request body is not JSON", direct=None)
for i, doc in enumerate(["[]", '"{tok}"', "null", "123", "true"]):
    case(
        f"A4{'abcde'[i]}",
        f"JSON {doc} instead of an object",
        lambda c, d=doc: raw(d.replace("{tok}", c.tok0).encode()),
        P,
        fragment="must be a JSON object",
        direct=None,
    )
for i, doc in enumerate(["123", "null", '["a.b.c"]', '{"t":"{tok}"}', "true"]):
    case(
        f"A5{'abcde'[i]}",
        f"token {doc}",
        lambda c, d=doc: raw(b'{"token":' + d.replace("{tok}", c.tok0).encode() + b"}"),
        P,
        fragment='"token"',
        direct=None,
    )
case("A6a", "empty object", lambda _: raw(b"{}"), P, fragment='has no "token"', direct=None)
case(
    "A6b",
    "misspelt key",
    lambda c: raw(b'{"tok":"' + c.tok0.encode() + b'"}'),
    P,
    fragment='has no "token"',
    direct=None,
)
case(
    "A6c",
    "extra key beside the token",
    lambda c: raw(b'{"token":"' + c.tok0.encode() + b'","extra":1}', token=c.tok0),
    OK,
    direct=None,
    legit=False,
    note="decision: extra keys are ignored, as PyPI's pydantic model does (clients sending more work)",
)
case(
    "A7",
    "duplicate token key",
    lambda c: raw(b'{"token":"x.y.z","token":"' + c.tok0.encode() + b'"}'),
    P,
    fragment="duplicate key",
    direct=None,
)
case("A8a", "1 MB token", lambda _: raw(body("A" * 1_048_576)), P, status=413, direct=None)
case(
    "A8b",
    "1 MB signed claim",
    lambda c: raw(body(jws(c.cast.att, H0, c.gh(pad="A" * 1_000_000)))),
    P,
    status=413,
    direct=None,
)
case(
    "A9a",
    "UTF-16 body with BOM",
    lambda c: raw("\ufeff".encode("utf-16-le") + body(c.tok0).decode().encode("utf-16-le")),
    P,
    fragment="not UTF-8",
    direct=None,
)
case(
    "A9b",
    "UTF-8 body with BOM",
    lambda c: raw(b"\xef\xbb\xbf" + body(c.tok0)),
    P,
    fragment="request body",
    direct=None,
)
case(
    "A9c",
    "0xff byte in the token",
    lambda c: raw(body(c.tok0[:20]).replace(b'"}', b'\xff"}')),
    P,
    fragment="not UTF-8",
    direct=None,
)
case(
    "A10",
    "deeply nested JSON",
    lambda _: raw(b'{"token":"a.b.c","x":' + b"[" * 30000 + b"]" * 30000 + b"}"),
    P,
    fragment="request body",
    direct=None,
)
case(
    "A10b",
    "JSON nested 33 levels beside the token",
    lambda _: raw(b'{"token":"a.b.c","x":' + b"[" * 32 + b"]" * 32 + b"}"),
    P,
    fragment="nests deeper than 32 levels",
    direct=None,
)
case(
    "A10c",
    "JSON nested 32 levels beside the token (within the limit)",
    lambda _: raw(b'{"token":"a.b.c","x":' + b"[" * 31 + b"]" * 31 + b"}", token="a.b.c"),
    P,
    fragment="malformed JWT",
    direct=None,
)
case("A11a", "NaN token", lambda _: raw(b'{"token":NaN}'), P, fragment="request body", direct=None)
case(
    "A11b",
    "1e999 beside the token",
    lambda _: raw(b'{"token":"a.b.c","n":1e999}'),
    P,
    fragment="request body",
    direct=None,
)
case(
    "A11c",
    "5000-digit number beside the token",
    lambda _: raw(b'{"token":"a.b.c","n":' + b"9" * 5000 + b"}"),
    P,
    fragment="request body",
    direct=None,
)
case(
    "A11d",
    "lone surrogate in the token",
    lambda _: raw(b'{"token":"\\ud800"}'),
    P,
    fragment="request body",
    direct=None,
)
case(
    "A11e",
    "non-ASCII token",
    lambda c: raw(body(c.tok0 + "\u00e9"), token=c.tok0 + "\u00e9"),
    P,
    fragment="outside base64url",
    direct=None,
)
case(
    "A12a",
    "GET on the exchange",
    lambda _: raw(b"", method="GET"),
    "method-not-allowed",
    status=405,
    direct=None,
)
case(
    "A12b",
    "trailing slash",
    lambda c: raw(body(c.tok0), path=MINT + "/"),
    "not-found",
    status=404,
    direct=None,
)
case(
    "A12c",
    "upper-case path",
    lambda c: raw(body(c.tok0), path="/_/OIDC/mint-token"),
    "not-found",
    status=404,
    direct=None,
)

# B — JWT structure and encoding (pre-parser). Structural failures are invalid-payload
# ("malformed JWT"), PyPI's code for a token it cannot decode; the table's "T" predates that.
case("B1", "empty token", tok(lambda _: ""), P, fragment="the token is empty")
case("B2", "two segments", tok(lambda c: f"{enc_json(H0)}.{enc_json(c.gh())}"), P, fragment="expected 3")
case("B3a", "four segments", tok(lambda c: c.tok0 + ".x"), P, fragment="expected 3")
case("B3b", "dot flood", tok(lambda _: "a." * 30000 + "a"), P, fragment="limit")
case(
    "B4",
    "signature stripped",
    tok(lambda c: f"{enc_json(H0)}.{enc_json(c.gh())}."),
    P,
    fragment="signature segment is empty",
)


def _json_serialization(ctx: Ctx, *, two_dots: bool) -> str:
    h, p, s = ctx.tok0.split(".")
    doc: dict[str, Any] = {"protected": h, "payload": p, "signature": s}
    if two_dots:
        doc["header"] = {"kid": "a.b"}
    return json.dumps(doc)


case(
    "B5a",
    "JWS JSON serialization",
    tok(lambda c: _json_serialization(c, two_dots=False)),
    P,
    fragment="malformed JWT",
)
case(
    "B5b",
    "JWS JSON serialization with two dots",
    tok(lambda c: _json_serialization(c, two_dots=True)),
    P,
    fragment="malformed JWT",
)
case("B6", "JWE instead of JWS", tok(lambda c: jwe_compact(c.cast.gh, c.gh())), P, fragment="expected 3")
case("B7", "JWE zip bomb", tok(lambda _: jwe_zip_bomb()), P, fragment="limit")
case("B8", "DEFLATE-compressed JWS payload", tok(deflated_jws), P, fragment="malformed JWT")
case(
    "B9",
    "duplicate alg in the header",
    tok(lambda c: jws_raw(c.cast.gh, b'{"alg":"none","alg":"RS256","kid":"gh-1"}', claims_bytes(c.gh()))),
    P,
    fragment="duplicate key",
)
for i, hb in enumerate([b"\xff\xfe", b"[1]", b"null"]):
    case(
        f"B10{'abc'[i]}",
        f"header bytes {hb!r}",
        tok(lambda c, h=hb: jws_raw(c.cast.gh, h, claims_bytes(c.gh()))),
        P,
        fragment="header",
    )
B11 = {
    "a": lambda t: t + "==",
    "b": lambda t: replace_segment(t, 0, t.split(".")[0] + "="),
    "c": lambda t: replace_segment(
        t,
        2,
        b64_std(t.split(".")[2])
        if b64_std(t.split(".")[2]) != t.split(".")[2]
        else "+" + t.split(".")[2][1:],
    ),
    "d": lambda t: replace_segment(t, 1, flip_unused_bits(t.split(".")[1])),
    "e": lambda t: replace_segment(t, 1, t.split(".")[1][:10] + " " + t.split(".")[1][10:]),
}


def _b11(ctx: Ctx, variant: str) -> str:
    # Variant d needs a payload segment whose length leaves unused bits; pad the claims until so.
    claims = ctx.gh()
    token = jws(ctx.cast.gh, H0, claims)
    while variant == "d" and len(token.split(".")[1]) % 4 not in {2, 3}:
        claims["run_id"] += "1"
        token = jws(ctx.cast.gh, H0, claims)
    return B11[variant](token)


for v in "abcde":
    case(
        f"B11{v}",
        f"non-canonical base64url ({v})",
        tok(lambda c, v=v: _b11(c, v)),
        P,
        fragment="malformed JWT",
    )
for i, pb in enumerate([b"[1,2]", b'"s"', b"null"]):
    case(
        f"B12{'abc'[i]}",
        f"payload {pb!r}",
        tok(lambda c, p=pb: jws_raw(c.cast.gh, claims_bytes(H0), p)),
        P,
        fragment="not a JSON object",
    )
case(
    "B13",
    "token over the length limit",
    tok(lambda c: jws(c.cast.gh, H0, c.gh(pad="A" * 45000))),
    P,
    fragment="limit",
)

# C — algorithms.
for i, alg in enumerate(["none", "None", "NONE", "nOnE"]):
    case(
        f"C1{'abcd'[i]}",
        f"alg {alg}, no signature",
        tok(lambda c, a=alg: f"{enc_json({'alg': a, 'typ': 'JWT'})}.{enc_json(c.gh())}."),
        P,
        fragment="signature segment is empty",
    )
    case(
        f"C1{'efgh'[i]}",
        f"alg {alg}, TOK0's signature kept",
        tok(lambda c, a=alg: replace_segment(c.tok0, 0, enc_json({"alg": a, "kid": "gh-1", "typ": "JWT"}))),
        T,
        fragment="not accepted",
    )
case(
    "C2",
    "missing alg",
    tok(lambda c: c.gh_token({"kid": "gh-1", "typ": "JWT"})),
    T,
    fragment="alg is missing",
)
for i, (fmt, extra) in enumerate(
    [("spki", b""), ("spki", b"\n"), ("pkcs1", b""), ("der", b""), ("jwk", b""), ("n", b"")]
):

    def _hs_key(c: Ctx, fmt: str = fmt, extra: bytes = extra) -> bytes:
        if fmt == "jwk":
            return json.dumps(c.cast.gh.public_jwk()).encode()
        if fmt == "n":
            return base64.urlsafe_b64decode(c.cast.gh.public_jwk()["n"] + "==")
        pem = public_pem(c.cast.gh, fmt)
        return pem.rstrip(b"\n") + extra if fmt != "der" else pem

    case(
        f"C3{'abcdef'[i]}",
        f"HS256 keyed with the public key ({fmt})",
        tok(lambda c, k=_hs_key: hs("HS256", k(c), {"alg": "HS256", "kid": "gh-1"}, c.gh())),
        T,
        fragment='"HS256" is not accepted',
    )
for i, (alg, secret) in enumerate(
    [("HS256", b""), ("HS256", b"secret"), ("HS384", b"password"), ("HS512", b"changeme")]
):
    case(
        f"C4{'abcd'[i]}",
        f"{alg} with a guessable secret",
        tok(lambda c, a=alg, s=secret: hs(a, s, {"alg": a, "kid": "gh-1", "typ": "JWT"}, c.gh())),
        T,
        fragment="not accepted",
    )
for i, alg in enumerate(["PS256", "RS384", "RS512"]):
    case(
        f"C5{'abc'[i]}",
        f"{alg} with GitHub's own key",
        tok(lambda c, a=alg: c.gh_token({**H0, "alg": a})),
        T,
        fragment="not accepted",
    )
case(
    "C6a",
    "ES256 with the attacker's EC key",
    tok(lambda c: jws(c.cast.att_ec, {"alg": "ES256", "kid": "gh-1"}, c.gh())),
    T,
    fragment='"ES256" is not accepted',
)
case(
    "C6b",
    "ES256 with an embedded off-curve jwk",
    tok(
        lambda c: jws(
            c.cast.att_ec, {"alg": "ES256", "kid": "att-ec", "jwk": off_curve_jwk(c.cast.att_ec)}, c.gh()
        )
    ),
    T,
    fragment='"jwk"',
)
case(
    "C6c",
    "psychic signature (r = s = 0) for GitHub",
    tok(
        lambda c: replace_segment(
            jws(c.cast.att_ec, {"alg": "ES256", "kid": "gh-1"}, c.gh()), 2, b64u(b"\x00" * 64)
        )
    ),
    T,
    fragment="not accepted",
)


def _es(c: Ctx, **kw: Any) -> str:
    return jws(c.cast.es, {"alg": "ES256", "kid": "es-1", "typ": "JWT"}, c.gh(iss=ES, **kw))


case(
    "C6d",
    "psychic signature (r = s = 0) for an ES256 issuer",
    tok(lambda c: replace_segment(_es(c), 2, b64u(b"\x00" * 64))),
    T,
    fragment="signature",
)


def _padded(c: Ctx, pad: int) -> str:
    """A valid ES256 token whose signature is re-encoded as 0..0||r||0..0||s (Wycheproof tc 379/385)."""
    token = _es(c)
    r, s = es_signature(token)
    return replace_segment(token, 2, b64u(b"\x00" * pad + r + b"\x00" * pad + s))


case("C7a", "ES256 signature zero-padded to 66 bytes", tok(lambda c: _padded(c, 1)), T, fragment="signature")
case(
    "C7b", "ES256 signature zero-padded to 514 bytes", tok(lambda c: _padded(c, 225)), T, fragment="signature"
)
case("C7c", "ES256 issuer, well-formed token (control)", tok(_es), OK)
for i, alg in enumerate(["EdDSA", "Ed25519", "ML-DSA-44", "RSA-OAEP", "dir", "PS512"]):
    case(
        f"C8{'abcdef'[i]}",
        f"alg {alg}",
        tok(lambda c, a=alg: c.gh_token({**H0, "alg": a})),
        T,
        fragment="not accepted",
    )

# D — key-selection headers.
case(
    "D1",
    "unknown kid",
    tok(lambda c: c.gh_token({**H0, "kid": str(uuid.uuid4())})),
    T,
    fragment="not among the published keys",
)
for i, kid in enumerate(
    [
        "../../../../../../dev/null",
        "/dev/null",
        "/proc/sys/kernel/randomize_va_space",
        "..\\..\\windows\\win.ini",
    ]
):
    case(
        f"D3{'abcd'[i]}",
        f"kid {kid!r}",
        tok(lambda c, k=kid: c.gh_token({**H0, "kid": k})),
        T,
        # Printable ASCII is a valid key id (RFC 7517), and only ever a lookup key.
        fragment="not among the published keys",
    )
case(
    "D3e",
    "kid /dev/null with HS256 and an empty key",
    tok(lambda c: hs("HS256", b"", {"alg": "HS256", "kid": "/dev/null"}, c.gh())),
    T,
    fragment="not accepted",
)
case(
    "D3f",
    "kid traversal with HS256 and key 2",
    tok(
        lambda c: hs(
            "HS256", b"2", {"alg": "HS256", "kid": "../../../../proc/sys/kernel/randomize_va_space"}, c.gh()
        )
    ),
    T,
    fragment="not accepted",
)
for i, kid in enumerate(
    ["x' UNION SELECT '1';--", "' OR '1'='1", "1; DROP TABLE used_tokens;--", "*)(uid=*"]
):
    case(
        f"D4{'abcd'[i]}",
        f"kid {kid!r}",
        tok(lambda c, k=kid: c.gh_token({**H0, "kid": k})),
        T,
        # Printable ASCII is a valid key id (RFC 7517), and only ever a lookup key.
        fragment="not among the published keys",
    )
case(
    "D4e",
    "kid SQL injection with HS256 key 1",
    tok(lambda c: hs("HS256", b"1", {"alg": "HS256", "kid": "x' UNION SELECT '1';--"}, c.gh())),
    T,
    fragment="not accepted",
)
for i, kid in enumerate(["|sleep 10", "$(sleep 10)", "a\nb", "\u0000", "\u001b[2J"]):
    case(
        f"D5{'abcde'[i]}",
        f"kid {kid!r}",
        tok(lambda c, k=kid: c.gh_token({**H0, "kid": k})),
        T,
        # A printable one is a key id nobody published; a control character is no key id.
        fragment="not among the published keys" if kid.isprintable() else "kid",
    )
case(
    "D6a",
    "kid of 30000 characters",
    tok(lambda c: c.gh_token({**H0, "kid": "A" * 30000})),
    P,
    fragment="limit",
)
case(
    "D6b",
    "kid of 129 characters",
    tok(lambda c: c.gh_token({**H0, "kid": "A" * 129})),
    T,
    fragment="1 to 128",
)
for i, kid in enumerate([5, [], {}, True]):
    case(
        f"D6{'cdef'[i]}",
        f"kid {json.dumps(kid)}",
        tok(lambda c, k=kid: c.gh_token({**H0, "kid": k})),
        T,
        fragment="kid must be a string",
    )
case("D6g", "kid null", tok(lambda c: c.gh_token({**H0, "kid": None})), T, fragment="no kid")
case("D7", "missing kid", tok(lambda c: c.gh_token({"alg": "RS256", "typ": "JWT"})), T, fragment="no kid")
for i, url in enumerate(["{att}/jwks", "file:///etc/passwd", GH + "/.well-known/jwks"]):
    case(
        f"D8{'abc'[i]}",
        f"jku {url}",
        tok(
            lambda c, u=url: jws(
                c.cast.att, {"alg": "RS256", "kid": "att-1", "jku": u.replace("{att}", c.attacker)}, c.gh()
            )
        ),
        T,
        fragment='"jku"',
    )
case(
    "D9a",
    "x5u",
    tok(lambda c: jws(c.cast.att, {"alg": "RS256", "kid": "att-1", "x5u": c.attacker + "/cert.pem"}, c.gh())),
    T,
    fragment='"x5u"',
)
case(
    "D9b",
    "x5c",
    tok(
        lambda c: jws(
            c.cast.att, {"alg": "RS256", "kid": "att-1", "x5c": [b64u(public_pem(c.cast.att, "der"))]}, c.gh()
        )
    ),
    T,
    fragment='"x5c"',
)
case(
    "D10",
    "embedded jwk",
    tok(lambda c: jws(c.cast.att, {"alg": "RS256", "kid": "gh-1", "jwk": c.cast.att.public_jwk()}, c.gh())),
    T,
    fragment='"jwk"',
)
for i, extra in enumerate([{"crit": ["exp"], "exp": 1}, {"crit": ["b64"], "b64": False}, {"crit": []}]):
    case(
        f"D11{'abc'[i]}",
        f"crit {extra}",
        tok(lambda c, e=extra: c.gh_token({**H0, **e})),
        T,
        fragment='"crit"',
    )
case("D12a", "typ at+jwt", tok(lambda c: c.gh_token({**H0, "typ": "at+jwt"})), T, fragment="typ")
case("D12b", "typ JWE", tok(lambda c: c.gh_token({**H0, "typ": "JWE"})), T, fragment="typ")
case("D12c", "cty JWT (nested)", tok(lambda c: c.gh_token({**H0, "cty": "JWT"})), T, fragment='"cty"')

# E — issuer.
case(
    "E1",
    "issuer not configured, with a working JWKS",
    tok(lambda c: jws(c.cast.att, {"alg": "RS256", "kid": "att-1"}, c.gh(iss=c.attacker))),
    P,
    fragment="unknown trusted publishing issuer",
)
_LOOKALIKES = [
    GH + ".evil.test",
    GH + "/",
    "https://TOKEN.actions.githubusercontent.com",
    "https://token.actions.githubusercontent.com@{att_host}",
    GH + "/../x",
    GH + "/acme-enterprise",
    "http://token.actions.githubusercontent.com",
    GH + " ",
    GH + "\u0000",
]
for i, iss in enumerate(_LOOKALIKES):
    case(
        f"E2{'abcdefghi'[i]}",
        f"issuer look-alike {iss!r}",
        tok(
            lambda c, s=iss: jws(
                c.cast.att,
                {"alg": "RS256", "kid": "att-1"},
                c.gh(iss=s.replace("{att_host}", c.attacker.removeprefix("http://"))),
            )
        ),
        P,
        fragment="unknown trusted publishing issuer",
    )
for i, iss in enumerate([None, 123, [GH], {"u": GH}]):
    case(
        f"E3{'abcd'[i]}",
        f"iss {json.dumps(iss)}",
        tok(lambda c, s=iss: c.gh_token(iss=None) if s is None else jws(c.cast.gh, H0, {**c.gh(), "iss": s})),
        P,
        fragment="iss",
    )


def _dup_iss(c: Ctx) -> str:
    claims = c.gh()
    text = json.dumps(
        {"iss": c.attacker, **{k: v for k, v in claims.items() if k != "iss"}}, separators=(",", ":")
    )
    return jws_raw(c.cast.att, b'{"alg":"RS256","kid":"att-1"}', (text[:-1] + f',"iss":"{GH}"}}').encode())


case("E4", "duplicate iss", tok(_dup_iss), P, fragment="duplicate key")
case(
    "E5",
    "GitHub's kid, attacker's key",
    tok(lambda c: jws(c.cast.att, H0, c.gh())),
    T,
    fragment="signature does not verify",
)
case(
    "E6a",
    "GitHub claims signed with GitLab's key",
    tok(lambda c: jws(c.cast.gl, {"alg": "RS256", "kid": "gl-1", "typ": "JWT"}, c.gh())),
    T,
    fragment="not among the published keys",
)
case(
    "E6b",
    "GitLab claims signed with GitHub's key",
    tok(lambda c: jws(c.cast.gh, H0, c.gl())),
    T,
    fragment="not among the published keys",
)
case(
    "E7a",
    "GHES tenant token with another org's claims",
    tok(lambda c: jws(c.cast.ghes, {"alg": "RS256", "kid": "ghes-1"}, c.gh(iss=GHES))),
    PUB,
    direct=VERIFIED,
    fragment="no trusted publisher is registered",
)
case(
    "E7b",
    "GHES tenant token for its own org (control)",
    tok(
        lambda c: jws(
            c.cast.ghes,
            {"alg": "RS256", "kid": "ghes-1"},
            c.gh(
                iss=GHES,
                repository="acme/tool",
                repository_owner="acme",
                repository_owner_id="4242",
                repository_id="4343",
                workflow_ref="acme/tool/.github/workflows/release.yml@refs/tags/v1.0.0",
                job_workflow_ref="acme/tool/.github/workflows/release.yml@refs/tags/v1.0.0",
            ),
        )
    ),
    OK,
    direct=VERIFIED,
)
case(
    "E8", "issuer switched off", tok(lambda c: jws(c.cast.gh, H0, c.gh(iss=OFF))), NE, fragment="not enabled"
)

# F — audience.
for i, aud in enumerate(["pypi", "sigstore", "https://github.com/octo-org", AUD.upper(), AUD + " "]):
    case(
        f"F1{'abcde'[i]}",
        f"aud {aud!r}",
        tok(lambda c, a=aud: c.gh_token(aud=a)),
        T,
        fragment="is not this index's audience",
    )
case(
    "F2a",
    "aud array with ours first",
    tok(lambda c: c.gh_token(aud=[AUD, "other"])),
    T,
    fragment="aud as an array",
)
case("F2b", "aud array of ours alone", tok(lambda c: c.gh_token(aud=[AUD])), T, fragment="aud as an array")
for i, aud in enumerate(["<absent>", None, "", {}, 7]):
    frag = "no aud" if aud == "<absent>" else "aud"
    case(
        f"F3{'abcde'[i]}",
        f"aud {json.dumps(aud)}",
        tok(
            lambda c, a=aud: (
                c.gh_token(aud=None) if a == "<absent>" else jws(c.cast.gh, H0, {**c.gh(), "aud": a})
            )
        ),
        T,
        fragment=frag,
    )
case(
    "F4",
    "Google token for another client id",
    tok(
        lambda c: jws(
            c.cast.gg,
            {"alg": "RS256", "kid": "gg-1", "typ": "JWT"},
            c.gg(aud="32555940559.apps.googleusercontent.com"),
        )
    ),
    T,
    fragment="audience",
)

# G — time.
case(
    "G1",
    "expired beyond the leeway",
    tok(lambda c: c.gh_token(exp=c.now - LEEWAY - 1, iat=c.now - 300)),
    T,
    fragment="expired",
)
case(
    "G1c",
    "expired within the leeway (control)",
    tok(lambda c: c.gh_token(exp=c.now - LEEWAY + 2, iat=c.now - 300)),
    OK,
)
case(
    "G2",
    "nbf in the future",
    tok(lambda c: c.gh_token(nbf=c.now + LEEWAY + 5)),
    T,
    fragment="not valid before",
)
case(
    "G3",
    "iat in the future",
    tok(lambda c: c.gh_token(iat=c.now + LEEWAY + 5, nbf=None, exp=c.now + 600)),
    T,
    fragment="in the future",
)
case("G4a", "no exp", tok(lambda c: c.gh_token(exp=None)), T, fragment="no exp")
case("G4b", "no iat", tok(lambda c: c.gh_token(iat=None)), T, fragment="no iat")
_G5 = [
    ("str", lambda c: str(c.now + 300)),
    ("1e300", lambda _: 1e300),
    ("float", lambda c: c.now + 300.5),
    ("true", lambda _: True),
    ("null", lambda _: None),
]
for i, (name, value) in enumerate(_G5):
    case(
        f"G5{'abcde'[i]}",
        f"exp {name}",
        tok(lambda c, v=value: jws(c.cast.gh, H0, {**c.gh(), "exp": v(c)})),
        T,
        fragment="exp",
    )
for i, (name, text, code) in enumerate(
    [
        ("NaN", "NaN", P),
        ("Infinity", "Infinity", P),
        ("1e400", "1e400", P),
        ("5000 digits", "9" * 5000, P),
        ("-1", "-1", T),
    ]
):

    def _raw_exp(c: Ctx, text: str = text) -> str:
        claims = claims_bytes({**c.gh(), "exp": 0}).replace(b'"exp":0', b'"exp":' + text.encode())
        return jws_raw(c.cast.gh, claims_bytes(H0), claims)

    case(
        f"G5{'fghij'[i]}", f"raw exp {name}", tok(_raw_exp), code, fragment="exp" if code == T else "payload"
    )
case(
    "G6", "ten-year lifetime", tok(lambda c: c.gh_token(exp=c.now + 10 * 365 * 86400)), T, fragment="lifetime"
)
case(
    "G7",
    "two-day-old iat",
    tok(lambda c: c.gh_token(iat=c.now - 2 * 86400, exp=c.now + 60)),
    T,
    fragment="lifetime",
)
for i, (claim, value) in enumerate(
    [("exp", 2**53 + 1), ("iat", 2**53 + 1), ("nbf", 2**53 + 1), ("iat", -(2**31)), ("nbf", -(2**31))]
):
    frag = "" if (claim, value) == ("nbf", -(2**31)) else claim
    code = OK if (claim, value) == ("nbf", -(2**31)) else T
    case(
        f"G8{'abcde'[i]}",
        f"{claim} = {value}",
        tok(lambda c, k=claim, v=value: c.gh_token(**{k: v})),
        code,
        fragment=frag,
    )

# H — replay (the registry's unique token ids). H2 (concurrency), H3 (retention) and H9
# (re-presentation after registration) are tests of their own in test_corpus_e2e.py.
case(
    "H1",
    "sequential replay",
    tok(lambda c: c.tok0),
    R,
    before=lambda c: [post(c.tok0)],
    legit=False,
    fragment="already used",
)
case(
    "H4",
    "presented after its retention",
    tok(lambda c: c.gh_token(exp=c.now - LEEWAY - 61, iat=c.now - 400)),
    T,
    fragment="expired",
)
for v in "abcde":
    case(
        f"H5{v}",
        f"malleable replay ({v})",
        tok(lambda c, v=v: _b11(c, v)),
        P,
        before=lambda c: [post(c.tok0)],
        legit=False,
    )
for i, jti in enumerate(["<absent>", "", "A" * 10000, 123]):
    case(
        f"H6{'abcd'[i]}",
        f"jti {str(jti)[:12]!r}",
        tok(
            lambda c, j=jti: (
                c.gh_token(jti=None) if j == "<absent>" else jws(c.cast.gh, H0, {**c.gh(), "jti": j})
            )
        ),
        T,
        fragment="jti",
    )

# I — claim types and shapes.
case(
    "I1",
    "owner id as a number",
    tok(lambda c: c.gh_token(repository_owner_id=1001)),
    PUB,
    fragment="must be a string",
)
case(
    "I2a",
    "repository as an array",
    tok(lambda c: c.gh_token(repository=["octo-org/demo"])),
    PUB,
    fragment="must be a string",
)
case("I2b", "sub as a number", tok(lambda c: c.gh_token(sub=123)), T, fragment="sub")
for i, repo in enumerate(["octo-orgdemo", "octo-org/demo/x", " octo-org/demo", ""]):
    case(
        f"I3{'abcd'[i]}",
        f"repository {repo!r}",
        tok(lambda c, r=repo: c.gh_token(repository=r)),
        PUB,
        fragment="repository",
    )
case("I4", "huge claim", tok(lambda c: c.gh_token(workflow="A" * 30000)), P, fragment="limit")
# Limits of trustpub's own (verifier settings max_claims, max_claim_length).
case(
    "I5",
    "150 claims",
    tok(lambda c: c.gh_token(**{f"x{i}": "1" for i in range(150)})),
    T,
    fragment="the limit is 100",
)
case(
    "I6",
    "a claim of 5000 characters",
    tok(lambda c: c.gh_token(workflow="A" * 5000)),
    T,
    fragment='claim "workflow" holds a string of 5000',
)
case(
    "I7",
    "a 5000-character string inside an array claim",
    tok(lambda c: c.gh_token(groups=["a", "B" * 5000])),
    T,
    fragment='claim "groups"',
)
case(
    "I8",
    "a 5000-character claim name",
    tok(lambda c: c.gh_token(**{"N" * 5000: "1"})),
    T,
    fragment="limit is 4096",
)


# J — GitHub publisher matching.
def _wf(repo: str, tail: str = "release.yml@refs/tags/v1.0.0") -> dict[str, str]:
    ref = f"{repo}/.github/workflows/{tail}"
    return {"workflow_ref": ref, "job_workflow_ref": ref}


case(
    "J1",
    "names in another case (control)",
    tok(
        lambda c: c.gh_token(repository="Octo-Org/Demo", repository_owner="Octo-Org", **_wf("Octo-Org/Demo"))
    ),
    OK,
)
for i, (owner, repo) in enumerate(
    [("octo-\u043erg", "demo"), ("\uff4f\uff43\uff54\uff4f-org", "demo"), ("octo-org", "demo\u200b")]
):
    case(
        f"J2{'abc'[i]}",
        f"confusable repository {owner}/{repo}",
        tok(
            lambda c, o=owner, r=repo: c.gh_token(
                repository=f"{o}/{r}", repository_owner=o, **_wf(f"{o}/{r}")
            )
        ),
        PUB,
        fragment="repository",
    )
case(
    "J2d",
    "Kelvin sign for publisher kube",
    tok(
        lambda c: c.gh_token(
            repository="\u212aube/demo",
            repository_owner="\u212aube",
            repository_owner_id="5005",
            **_wf("\u212aube/demo"),
        )
    ),
    PUB,
    fragment="repository",
)
case(
    "J3",
    "resurrected owner (other owner id)",
    tok(lambda c: c.gh_token(repository_owner_id="9999")),
    PUB,
    fragment="owner id",
)
for i, oid in enumerate([None, "", "1001 "]):
    case(
        f"J4{'abc'[i]}",
        f"owner id {oid!r}",
        tok(lambda c, o=oid: c.gh_token(repository_owner_id=o)),
        PUB,
        fragment="repository_owner_id",
    )
case(
    "J5",
    "foreign reusable workflow",
    tok(
        lambda c: c.gh_token(job_workflow_ref="evil-org/tools/.github/workflows/release.yml@refs/heads/main")
    ),
    PUB,
    fragment="reusable workflow",
)
case(
    "J6",
    "attacker repository calls our workflow",
    tok(
        lambda c: c.gh_token(
            repository="evil-org/x",
            repository_owner="evil-org",
            repository_owner_id="666",
            workflow_ref="evil-org/x/.github/workflows/ci.yml@refs/heads/main",
            job_workflow_ref="octo-org/demo/.github/workflows/release.yml@refs/tags/v1.0.0",
        )
    ),
    PUB,
    fragment="no trusted publisher is registered",
)
_J7 = [
    "release.yml@refs/heads/x.yml@main",
    "release.yaml@refs/tags/v1.0.0",
    "Release.yml@refs/tags/v1.0.0",
    "../workflows/release.yml@refs/tags/v1.0.0",
    "sub/release.yml@refs/tags/v1.0.0",
    "release.yml",
]
for i, tail in enumerate(_J7):
    case(
        f"J7{'abcdef'[i]}",
        f"workflow {tail!r}",
        tok(lambda c, t=tail: c.gh_token(**_wf("octo-org/demo", t))),
        PUB,
        fragment="workflow_ref",
    )
case(
    "J8",
    "ref and sha mismatch",
    tok(lambda c: c.gh_token(sha="f" * 40, **_wf("octo-org/demo", "release.yml@refs/heads/main"))),
    PUB,
    fragment="workflow_ref",
)
case(
    "J9a",
    "environment staging",
    tok(lambda c: c.gh_token(environment="staging")),
    PUB,
    fragment="environment",
)
case("J9b", "environment absent", tok(lambda c: c.gh_token(environment=None)), PUB, fragment="environment")
case("J9c", "environment Release (control)", tok(lambda c: c.gh_token(environment="Release")), OK)
case(
    "J9d",
    "environment 'release '",
    tok(lambda c: c.gh_token(environment="release ")),
    PUB,
    fragment="environment",
)
case(
    "J9e",
    "environment with a Cyrillic e",
    tok(lambda c: c.gh_token(environment="rel\u0435ase")),
    PUB,
    fragment="environment",
)
case(
    "J9f",
    "publisher without environment, claim release (control)",
    tok(lambda c: c.gh_token(repository="octo-org/noenv", repository_id="2003", **_wf("octo-org/noenv"))),
    OK,
)
case(
    "J10",
    "pull_request_target",
    tok(lambda c: c.gh_token(event_name="pull_request_target")),
    PUB,
    fragment="pull_request_target",
)
case(
    "J11a",
    "customised sub (control)",
    tok(lambda c: c.gh_token(sub="repository_owner_id:1001:repository_id:2002:environment:release")),
    OK,
)
case(
    "J11b",
    "another repository's sub (control: sub is ignored)",
    tok(lambda c: c.gh_token(sub="repo:evil-org/x:ref:refs/heads/main")),
    OK,
)

# K — GitLab (P_gl: grp/sub + proj, .gitlab-ci.yml, environment production, ids 31/32).
H_GL = {"alg": "RS256", "kid": "gl-1", "typ": "JWT"}


def gl_token(c: Ctx, **overrides: Any) -> str:
    return jws(c.cast.gl, H_GL, c.gl(**overrides))


GL_URI = "gitlab.com/grp/sub/proj//.gitlab-ci.yml@refs/tags/v1"
case("K0", "GitLab baseline (control)", tok(gl_token), OK)
case(
    "K1",
    "pipeline file of another project",
    tok(lambda c: gl_token(c, ci_config_ref_uri="gitlab.com/evil/ci//.gitlab-ci.yml@refs/tags/v1")),
    PUB,
    fragment="ci_config_ref_uri",
)
case(
    "K2a",
    "no ci_config_ref_uri",
    tok(lambda c: gl_token(c, ci_config_ref_uri=None)),
    PUB,
    fragment="ci_config_ref_uri",
)
case(
    "K2b",
    "ci_config_ref_uri null",
    tok(lambda c: jws(c.cast.gl, H_GL, {**c.gl(), "ci_config_ref_uri": None})),
    PUB,
    fragment="ci_config_ref_uri",
)
case(
    "K3a",
    "ref_path of a branch, URI of a tag",
    tok(lambda c: gl_token(c, ref_path="refs/heads/v1")),
    PUB,
    fragment="ci_config_ref_uri",
)
case(
    "K3b",
    "URI with a second @",
    tok(lambda c: gl_token(c, ci_config_ref_uri=GL_URI + ".yml@x")),
    PUB,
    fragment="ci_config_ref_uri",
)
case(
    "K3c",
    "URI with a parent directory",
    tok(
        lambda c: gl_token(
            c, ci_config_ref_uri="gitlab.com/grp/sub/proj//../other/.gitlab-ci.yml@refs/tags/v1"
        )
    ),
    PUB,
    fragment="ci_config_ref_uri",
)
case(
    "K3d",
    "URI on a look-alike host",
    tok(
        lambda c: gl_token(
            c, ci_config_ref_uri="gitlab.com.evil.test/grp/sub/proj//.gitlab-ci.yml@refs/tags/v1"
        )
    ),
    PUB,
    fragment="ci_config_ref_uri",
)
case(
    "K4",
    "sub of another project",
    tok(lambda c: gl_token(c, sub="project_path:evil/x:ref_type:tag:ref:v1")),
    PUB,
    fragment="sub",
)
case(
    "K5a",
    "sibling project across a namespace boundary",
    tok(
        lambda c: gl_token(
            c,
            project_path="grp/sub-proj",
            namespace_path="grp",
            sub="project_path:grp/sub-proj:ref_type:tag:ref:v1",
            ci_config_ref_uri="gitlab.com/grp/sub-proj//.gitlab-ci.yml@refs/tags/v1",
        )
    ),
    PUB,
    fragment="no trusted publisher is registered",
)
case(
    "K5b",
    "project path in another case (control)",
    tok(
        lambda c: gl_token(
            c,
            project_path="GRP/Sub/Proj",
            namespace_path="GRP/Sub",
            sub="project_path:GRP/Sub/Proj:ref_type:tag:ref:v1",
            ci_config_ref_uri="gitlab.com/GRP/Sub/Proj//.gitlab-ci.yml@refs/tags/v1",
        )
    ),
    OK,
)
case(
    "K6",
    "environment in another case",
    tok(lambda c: gl_token(c, environment="Production")),
    PUB,
    fragment="environment",
)
case(
    "K7",
    "fork merge-request pipeline",
    tok(
        lambda c: gl_token(
            c,
            pipeline_source="merge_request_event",
            project_path="attacker/proj",
            namespace_path="attacker",
            sub="project_path:attacker/proj:ref_type:tag:ref:v1",
            ci_config_ref_uri="gitlab.com/attacker/proj//.gitlab-ci.yml@refs/tags/v1",
        )
    ),
    PUB,
    fragment="no trusted publisher is registered",
)

# L — Google and ActiveState.
H_GG = {"alg": "RS256", "kid": "gg-1", "typ": "JWT"}
H_AS = {"alg": "RS256", "kid": "as-1", "typ": "JWT"}


def gg_token(c: Ctx, **overrides: Any) -> str:
    return jws(c.cast.gg, H_GG, c.gg(**overrides))


def as_token(c: Ctx, **overrides: Any) -> str:
    return jws(c.cast.as_, H_AS, c.as_(**overrides))


case("L0a", "Google baseline (control)", tok(gg_token), OK)
case("L0b", "ActiveState baseline (control)", tok(as_token), OK)
case(
    "L1a",
    "email_verified false",
    tok(lambda c: gg_token(c, email_verified=False)),
    PUB,
    fragment="email_verified",
)
case(
    "L1b",
    "email_verified absent",
    tok(lambda c: gg_token(c, email_verified=None)),
    PUB,
    fragment="email_verified",
)
case(
    "L1c",
    'email_verified "true"',
    tok(lambda c: gg_token(c, email_verified="true")),
    PUB,
    fragment="email_verified",
)
case(
    "L2",
    "Google sub other than the pinned one",
    tok(lambda c: gg_token(c, sub="999")),
    PUB,
    fragment='sub "999"',
)
case(
    "L3",
    "scheme-less Google issuer",
    tok(lambda c: gg_token(c, iss="accounts.google.com")),
    P,
    fragment="unknown trusted publishing issuer",
)
case("L4a", "ActiveState builder other", tok(lambda c: as_token(c, builder="other")), PUB, fragment="builder")
case(
    "L4b",
    "ActiveState sub without the project",
    tok(lambda c: as_token(c, sub="org:acme")),
    PUB,
    fragment="sub",
)
case(
    "L4c",
    "ActiveState actor other than the registered one",
    tok(lambda c: as_token(c, actor_id=AS_OTHER_ACTOR)),
    PUB,
    fragment="actor",
)
case(
    "H8",
    "Google token presented twice",
    tok(gg_token),
    R,
    before=lambda c: [post(gg_token(c))],
    legit=False,
    fragment="already used",
)


# M — pending publishers (registered by the end-to-end level; no direct level: the database).
def pending_token(c: Ctx, repository: str) -> str:
    repo = f"octo-org/{repository}"
    return c.gh_token(repository=repo, repository_id=str(sum(map(ord, repository))), **_wf(repo))


case(
    "M0",
    "pending publisher's first publish creates its project (control)",
    tok(lambda c: pending_token(c, "newrepo")),
    OK,
    direct=None,
)
case(
    "M1",
    "pending publisher whose project exists (normalised name)",
    tok(lambda c: pending_token(c, "m1repo")),
    PEND,
    direct=None,
    fragment="project already exists",
)
case(
    "M2",
    "expired pending publisher",
    tok(lambda c: pending_token(c, "m2repo")),
    PUB,
    direct=None,
    fragment="expired",
)

# Positive controls of §3.2 besides those above: TOK0 itself (GitHub's nbf = iat - 600 shape).
case("OK1", "TOK0 (control)", tok(lambda c: c.tok0), OK, legit=False)


def case_ids(cases: list[Case]) -> list[str]:
    return [c.id for c in cases]
