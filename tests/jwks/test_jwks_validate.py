"""The key-set validator and the strict JSON reader, alone (no network)."""

from __future__ import annotations

import json

import pytest
from deploy.devstack.issuer import SigningKey
from tests.support.jwks import ec_jwk, oct_jwk, off_curve_jwk, rsa_jwk, rsa_private_jwk

from trustpub.jwks.fetch import FetchError, check_jwks_uri, parse_json
from trustpub.jwks.validate import KeySetRefused, validate_key_set
from trustpub.messages.keys import kv_key
from trustpub.providers.issuers import GITHUB, GOOGLE, Issuer, IssuerRegistry
from trustpub.runtime.config import ConfigError

ALGS = ("RS256",)


@pytest.fixture(scope="module")
def good() -> dict:
    return SigningKey.generate("good-1").public_jwk()


def padded(key: dict) -> dict:
    return {**key, "n": key["n"] + "=="}


def check(keys: list, algorithms: tuple[str, ...] = ALGS, max_keys: int = 50):
    return validate_key_set({"keys": keys}, algorithms=algorithms, max_keys=max_keys)


def test_valid_keys_keep_only_public_members(good):
    extra = {**good, "x5c": ["MIIB..."], "x5t": "abc", "ext": True}
    ec_key = ec_jwk("ec-1")
    valid = check([extra, ec_key], algorithms=("RS256", "ES256"))
    assert valid.kids == ["good-1", "ec-1"]
    assert valid.dropped == []
    assert valid.keys[0] == {k: good[k] for k in ("kty", "kid", "n", "e", "use", "alg")}
    assert set(valid.keys[1]) == {"kty", "kid", "crv", "x", "y", "use", "alg"}


def test_use_and_alg_may_be_absent(good):
    bare = {k: good[k] for k in ("kty", "kid", "n", "e")}
    assert check([bare]).keys == [bare]


@pytest.mark.parametrize(
    ("make", "category", "reason"),
    [
        (lambda: rsa_jwk("small", bits=1024), "key", "1024-bit RSA modulus"),
        (lambda: rsa_jwk("e3", exponent=3), "key", "RSA exponent 3"),
        (lambda: oct_jwk("sym"), "kty", "symmetric (oct)"),
        (lambda: {"kty": "oct", "kid": "sym"}, "kty", "symmetric (oct)"),
        (lambda: rsa_private_jwk("leaked"), "private", "private key members (d, dp, dq, p, q, qi)"),
        (lambda: off_curve_jwk("off"), "key", "not on P-256"),
        (lambda: {**rsa_jwk("enc"), "use": "enc"}, "use", "use 'enc'"),
        (lambda: {**rsa_jwk("ops"), "key_ops": ["encrypt"]}, "use", "key_ops without verify"),
        (lambda: {**rsa_jwk("hs"), "alg": "HS256"}, "alg", "alg 'HS256'"),
        (lambda: {**rsa_jwk("ps"), "alg": "PS256"}, "alg", "alg 'PS256'"),
        (lambda: {**rsa_jwk("x"), "kid": "a\nb"}, "kid", "kid must be"),
        (lambda: {**rsa_jwk("x"), "kid": "k\u00e9y"}, "kid", "kid must be"),
        (lambda: {**rsa_jwk("x"), "kid": "k" * 129}, "kid", "kid must be"),
        (lambda: {k: v for k, v in rsa_jwk("x").items() if k != "kid"}, "kid", "kid must be"),
        (lambda: {**rsa_jwk("num"), "kid": 7}, "kid", "kid must be"),
        (lambda: {**rsa_jwk("okp"), "kty": "OKP"}, "kty", "kty 'OKP'"),
        (
            lambda: padded(rsa_jwk("pad")),
            "key",
            "n is not valid base64url",
        ),
        (lambda: {**rsa_jwk("ne"), "e": 65537}, "key", "e must be a base64url string"),
        (lambda: {**ec_jwk("k1"), "crv": "secp256k1"}, "key", "crv 'secp256k1'"),
        (lambda: {**ec_jwk("short"), "x": "AQAB"}, "key", "x is 3 bytes, expected 32"),
        (lambda: "not an object", "key", "a key must be a JSON object, got a string"),
    ],
)
def test_unusable_key_is_dropped_and_the_rest_kept(good, make, category, reason):
    bad = make()
    valid = check([bad, good], algorithms=("RS256", "ES256"))
    assert valid.kids == ["good-1"]
    [dropped] = valid.dropped
    assert dropped.category == category
    assert reason in dropped.reason


def test_ec_key_with_rsa_algorithm_is_dropped(good):
    valid = check([{**ec_jwk("ec"), "alg": "RS256"}, good], algorithms=("RS256", "ES256"))
    assert "expected ES256" in valid.dropped[0].reason


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ([], "must be a JSON object, got an array"),
        ({}, "must have a 'keys' list, got null"),
        ({"keys": {}}, "must have a 'keys' list, got an object"),
        ({"keys": []}, "no usable key (0 listed, 0 dropped)"),
        ({"keys": [{"kty": "oct", "kid": "a", "k": "AAAA"}]}, "no usable key (1 listed, 1 dropped"),
    ],
)
def test_document_refused(doc, reason):
    with pytest.raises(KeySetRefused) as err:
        validate_key_set(doc, algorithms=ALGS, max_keys=50)
    assert reason in err.value.reason


def test_duplicate_kids_refuse_the_whole_document(good):
    twin = {**rsa_jwk("other"), "kid": "good-1"}
    with pytest.raises(KeySetRefused, match="two keys with kid 'good-1'"):
        check([good, twin])


def test_too_many_keys_refuse_the_whole_document(good):
    keys = [{**good, "kid": f"k{i}"} for i in range(51)]
    with pytest.raises(KeySetRefused, match="51 keys, at most 50"):
        check(keys)
    assert len(check(keys[:50]).keys) == 50


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"keys": [], "keys": []}', 'duplicate key "keys"'),
        (b'{"a": NaN}', "NaN is not JSON"),
        (b'{"a": -Infinity}', "-Infinity is not JSON"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b"\xef\xbb\xbf{}", "not JSON"),
        (b"<html>hello</html>", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper than"),
        (b"[" * 17 + b"]" * 17, "deeper than 16 levels"),
    ],
)
def test_strict_json(body, reason):
    with pytest.raises(FetchError) as err:
        parse_json(body, "key set")
    assert err.value.result == "refused"
    assert reason in err.value.reason


def test_strict_json_accepts_a_real_document(good):
    assert parse_json(json.dumps({"keys": [good]}).encode(), "key set") == {"keys": [good]}
    assert parse_json(b"[" * 16 + b"]" * 16, "x") is not None


@pytest.mark.parametrize(
    ("uri", "loopback", "ok"),
    [
        (f"{GITHUB}/.well-known/jwks", False, True),
        ("https://evil.example/.well-known/jwks", False, False),
        ("https://token.actions.githubusercontent.com.evil.example/jwks", False, False),
        ("http://token.actions.githubusercontent.com/.well-known/jwks", False, False),
        ("https://user:pw@token.actions.githubusercontent.com/jwks", False, False),
        ("http://127.0.0.1:8900/.well-known/jwks", False, False),
        ("http://127.0.0.1:8900/.well-known/jwks", True, True),
        ("http://[::1]:8900/jwks", True, True),
        ("http://10.0.0.1/jwks", True, False),
        ("file:///etc/passwd", True, False),
        ("https://127.0.0.1:99999/jwks", True, False),
        # The issuer's own port only: another port of its host may be another service.
        ("https://token.actions.githubusercontent.com:8443/.well-known/jwks", False, False),
        ("https://token.actions.githubusercontent.com:443/.well-known/jwks", False, True),
        ("https://token.actions.githubusercontent.com:abc/jwks", False, False),
        (None, False, False),
        ("", False, False),
    ],
)
def test_jwks_uri_must_be_on_the_issuer_host(uri, loopback, ok):
    iss = Issuer(issuer=GITHUB, provider="github", allow_loopback_http=loopback)
    if ok:
        check_jwks_uri(uri, iss)
    else:
        with pytest.raises(FetchError) as err:
            check_jwks_uri(uri, iss)
        assert err.value.result == "refused"


def test_google_keys_host_is_configured_for_google_only():
    builtin = IssuerRegistry.from_entries([])
    google = builtin.get(GOOGLE)
    assert google is not None
    assert google.jwks_hosts == ("www.googleapis.com",)
    check_jwks_uri("https://www.googleapis.com/oauth2/v3/certs", google)
    # Configuration, not code: a Google issuer without the extra host refuses it.
    with pytest.raises(FetchError):
        check_jwks_uri("https://www.googleapis.com/oauth2/v3/certs", Issuer(issuer=GOOGLE, provider="google"))
    with pytest.raises(FetchError):
        check_jwks_uri("https://www.googleapis.com/oauth2/v3/certs", builtin.get(GITHUB))
    with pytest.raises(FetchError):
        check_jwks_uri("http://www.googleapis.com/oauth2/v3/certs", google)


def test_operator_configures_extra_keys_hosts():
    reg = IssuerRegistry.from_entries(
        [{"issuer": "https://sso.example.com", "provider": "gitlab", "jwks_hosts": ["keys.example.net"]}]
    )
    iss = reg.get("https://sso.example.com")
    assert iss is not None
    assert iss.jwks_hosts == ("keys.example.net",)
    check_jwks_uri("https://keys.example.net/jwks", iss)
    with pytest.raises(FetchError):
        check_jwks_uri("https://evil.example.net/jwks", iss)
    with pytest.raises(FetchError):
        check_jwks_uri("https://keys.example.net:8443/jwks", iss)
    # jwks_url may name the extra host; discovery_url may not.
    IssuerRegistry.from_entries(
        [{**_SSO, "jwks_hosts": ["keys.example.net"], "jwks_url": "https://keys.example.net/jwks"}]
    )
    with pytest.raises(ConfigError):
        IssuerRegistry.from_entries(
            [{**_SSO, "jwks_hosts": ["keys.example.net"], "discovery_url": "https://keys.example.net/d"}]
        )


_SSO = {"issuer": "https://sso.example.com", "provider": "gitlab"}


@pytest.mark.parametrize(
    "hosts",
    [
        ["https://keys.example.net"],
        ["keys.example.net:443"],
        ["keys.example.net/path"],
        ["127.0.0.1"],
        ["localhost"],
        ["Keys.Example.Net"],
        [""],
        [7],
        "keys.example.net",
    ],
)
def test_bad_jwks_hosts_are_configuration_errors(hosts):
    with pytest.raises(ConfigError, match="jwks_hosts"):
        IssuerRegistry.from_entries([{**_SSO, "jwks_hosts": hosts}])


def test_kv_key_is_unpadded_base64url():
    assert kv_key(GITHUB) == "aHR0cHM6Ly90b2tlbi5hY3Rpb25zLmdpdGh1YnVzZXJjb250ZW50LmNvbQ"
    assert kv_key("https://gitlab.com") != kv_key("https://gitlab.com/")
    assert "=" not in kv_key("a")


def test_an_issuer_on_its_own_port_keeps_its_keys_there():
    reg = IssuerRegistry.from_entries([{"issuer": "https://sso.example.com:8443", "provider": "gitlab"}])
    iss = reg.get("https://sso.example.com:8443")
    assert iss is not None
    check_jwks_uri("https://sso.example.com:8443/oauth/discovery/keys", iss)
    for other in ("https://sso.example.com/keys", "https://sso.example.com:9443/keys"):
        with pytest.raises(FetchError, match="hosts and ports"):
            check_jwks_uri(other, iss)
    # The operator's own configuration is held to the same rule.
    with pytest.raises(ConfigError, match="own host and port"):
        IssuerRegistry.from_entries(
            [
                {
                    "issuer": "https://sso.example.com",
                    "provider": "gitlab",
                    "jwks_url": "https://sso.example.com:8443/k",
                }
            ]
        )
