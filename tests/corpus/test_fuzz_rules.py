"""Property tests (hypothesis): arbitrary input into the body parser, the JWT pre-parser, the
verifier's claim checks and the providers' claim rules; only trustpub's own errors come out.

Each property is "returns a value of the documented kind, or raises the documented trustpub
error", never a TypeError, KeyError, RecursionError or UnicodeError (which would be a 5xx, or a
verifier reply of internal-error, in the service).
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import string
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.corpus.cases import H0, Ctx, jws, jws_raw
from tests.corpus.corpus_keys import GH, PUBLISHERS, Cast
from tests.corpus.direct import Direct

from trustpub.gateway.payload import token_from_body
from trustpub.messages import InvalidPayload, InvalidPublisher, InvalidToken, NotEnabled, TrustpubError
from trustpub.messages.v1 import VerifiedToken
from trustpub.providers import github
from trustpub.providers.base import Provider
from trustpub.providers.rules import RuleResult
from trustpub.verifier import preparse

# Bounded: the whole module runs in a few seconds. No example database in the work tree.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

B64URL = string.ascii_letters + string.digits + "-_"

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def enc(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def must_be(errors: tuple[type[TrustpubError], ...], call: Callable[[], Any]) -> Any:
    """``call()``'s value, or None when it raised one of ``errors`` (anything else fails)."""
    try:
        return call()
    except errors:
        return None


# --- the gateway's body parser -----------------------------------------------------------


@FUZZ
@given(
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.text().map(lambda t: json.dumps({"token": t}).encode())
    | st.text(alphabet=st.characters(), max_size=60).map(
        lambda t: ('{"token": "' + t + '"}').encode("utf-8", "surrogatepass")
    )
    # JSON escapes of any code unit, surrogates included (json accepts a lone one).
    | st.lists(st.integers(0xD800, 0xDFFF) | st.integers(0, 0xFFFF), max_size=4).map(
        lambda cps: ('{"token":"' + "".join(f"\\u{c:04x}" for c in cps) + '"}').encode()
    )
)
def test_body_parser_returns_a_sendable_token_or_refuses(data: bytes) -> None:
    token = must_be((InvalidPayload,), lambda: token_from_body(data))
    if token is not None:
        assert isinstance(token, str)
        token.encode("utf-8")  # it can be hashed and sent on over NATS


# --- the verifier's pre-parser -------------------------------------------------------------

segments = st.text(alphabet=B64URL, max_size=40) | json_values.map(enc) | st.text(max_size=20)


@FUZZ
@given(st.text(max_size=200) | st.lists(segments, min_size=1, max_size=5).map(".".join))
def test_preparser_returns_a_compact_token_or_refuses(token: str) -> None:
    parsed = must_be((InvalidPayload,), lambda: preparse.parse(token, max_bytes=16384))
    if parsed is not None:
        assert isinstance(parsed.header, dict)
        assert isinstance(parsed.payload, dict)
        assert isinstance(parsed.iss, str)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "x5t", "jku", "crit"]) | st.text(max_size=5),
        json_values,
        max_size=5,
    )
)
def test_header_policy_returns_alg_and_kid_or_refuses(header: dict[str, Any]) -> None:
    issuer = Direct(CAST).issuers.get(GH)
    assert issuer is not None
    result = must_be((InvalidToken,), lambda: preparse.check_header(header, issuer))
    if result is not None:
        alg, kid = result
        assert alg in issuer.algorithms
        assert preparse.KID_RE.fullmatch(kid)


# --- the verifier, claims of any shape, really signed ---------------------------------------

CAST = Cast()
DIRECT = Direct(CAST)
CLAIM_NAMES = [
    "iss",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "sub",
    "repository",
    "repository_owner_id",
    "environment",
]


@FUZZ
@given(
    st.dictionaries(st.sampled_from(CLAIM_NAMES) | st.text(max_size=8), json_values, max_size=6),
    st.sets(st.sampled_from(CLAIM_NAMES), max_size=3),
)
def test_verifier_on_signed_claims_of_any_shape(overrides: dict[str, Any], dropped: set[str]) -> None:
    ctx = Ctx(CAST, attacker="http://127.0.0.1:9")
    claims = {k: v for k, v in {**ctx.gh(), **overrides}.items() if k not in dropped}
    token = jws(CAST.gh, H0, claims)
    outcome = must_be(
        (InvalidPayload, InvalidToken, NotEnabled),
        lambda: asyncio.run(asyncio.wait_for(DIRECT.verifier.verify(token), 5)),
    )
    if outcome is not None:
        assert isinstance(outcome, VerifiedToken)
        assert outcome.claims == claims
        DIRECT.match(outcome)  # the rules take whatever the verifier accepted


@FUZZ
@given(st.binary(max_size=200))
def test_verifier_on_signed_payloads_of_any_bytes(payload: bytes) -> None:
    token = jws_raw(CAST.gh, json.dumps(H0).encode(), payload)
    must_be(
        (InvalidPayload, InvalidToken),
        lambda: asyncio.run(asyncio.wait_for(DIRECT.verifier.verify(token), 5)),
    )


# --- the providers' claim rules -----------------------------------------------------------

# A registered spec per provider (the shapes the CLI stores); providers not (yet) present in
# trustpub.providers are skipped.
SPECS: dict[str, dict[str, Any]] = {
    "github": {k: v for _, _, k in [PUBLISHERS[0]] for k, v in k.items()},
    "gitlab": {
        "namespace": "grp/sub",
        "project": "proj",
        "ci_config_path": ".gitlab-ci.yml",
        "environment": "production",
        # Its ids open: pinned on first use, then confirmed (DESIGN.md, "Owners are confirmed").
        "pin_on_first_use": True,
    },
    "google": {"email": "pub@proj.iam.gserviceaccount.com", "sub": "1122334455"},
    "activestate": {
        "organization": "acme",
        "project": "tool",
        "actor_id": "7c2c8e4e-5b8e-4a4e-9d0e-2f6e4f1a9b01",
    },
}


def provider(name: str) -> tuple[Provider, dict[str, Any]]:
    try:
        module = importlib.import_module(f"trustpub.providers.{name}")
    except ImportError:
        pytest.skip(f"trustpub.providers.{name} does not exist yet")
    spec = module.validate_spec(**SPECS[name]) if name != "github" else github.validate_spec(**SPECS[name])
    return module.PROVIDER, spec


GITHUB_NAMES = [*github.REQUIRED_CLAIMS, "environment", "iss", "sub"]
OTHER_NAMES = ["project_path", "namespace_id", "project_id", "ci_config_ref_uri", "ref_path", "email",
               "email_verified", "sub", "organization", "project", "actor_id", "builder", "iss"]  # fmt: skip


@pytest.mark.parametrize("name", ["github", "gitlab", "google", "activestate"])
def test_claim_rules_only_ever_refuse_with_invalid_publisher(name: str) -> None:
    rules, spec = provider(name)

    @FUZZ
    @given(
        st.dictionaries(
            st.sampled_from(GITHUB_NAMES + OTHER_NAMES) | st.text(max_size=8),
            json_values | st.text(alphabet=string.printable, max_size=80),
            max_size=12,
        )
    )
    def check(claims: dict[str, Any]) -> None:
        key = must_be((InvalidPublisher,), lambda: rules.lookup_key(claims))
        assert key is None or isinstance(key, str)
        results = rules.evaluate(spec, claims)
        assert results
        assert all(isinstance(r, RuleResult) for r in results)
        assert isinstance(rules.identity(claims), str)
        assert all(isinstance(v, str) for v in rules.provenance(claims).values())
        assert all(isinstance(v, str) for v in rules.pins(spec, claims).values())

    check()
