"""Answers that must be refused, each keeping the last good set (DESIGN.md, "Keys of identity providers")."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from deploy.devstack.issuer import DevIssuer
from structlog.testing import capture_logs
from tests.support.jwks import (
    JwksTest,
    oct_jwk,
    off_curve_jwk,
    redirector,
    rsa_jwk,
    rsa_private_jwk,
)

from trustpub.messages.v1 import KeySet, RefreshRequest

COOLDOWN = 60.0


def doc(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def dev_key(dev: DevIssuer) -> dict[str, Any]:
    return dev.keys[0].public_jwk()


def no_alg(key: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in key.items() if k != "alg"}


# (name, where the garbage is served, body or a function of the dev issuer and a redirector URL,
# text expected in the logged reason)
Case = tuple[str, str, bytes | Callable[[DevIssuer, str], bytes], str]

CASES: list[Case] = [
    ("html", "jwks", b"<html><body>Service Unavailable</body></html>", "is not JSON"),
    ("empty object", "jwks", b"{}", "must have a 'keys' list, got null"),
    ("empty keys", "jwks", b'{"keys": []}', "no usable key (0 listed"),
    ("keys not a list", "jwks", b'{"keys": "none"}', "'keys' list, got a string"),
    ("rsa-1024", "jwks", lambda _d, _r: doc({"keys": [rsa_jwk("small", bits=1024)]}), "1024-bit RSA modulus"),
    ("e=3", "jwks", lambda _d, _r: doc({"keys": [rsa_jwk("e3", exponent=3)]}), "RSA exponent 3"),
    ("oct", "jwks", lambda _d, _r: doc({"keys": [oct_jwk("hmac")]}), "symmetric (oct)"),
    ("private d", "jwks", lambda _d, _r: doc({"keys": [rsa_private_jwk("leak")]}), "private key members"),
    ("off-curve ec", "jwks", lambda _d, _r: doc({"keys": [no_alg(off_curve_jwk("ec"))]}), "not on P-256"),
    (
        "duplicate kids",
        "jwks",
        lambda d, _r: doc({"keys": [dev_key(d), dev_key(d)]}),
        "two keys with kid 'dev-1'",
    ),
    (
        "too many keys",
        "jwks",
        lambda d, _r: doc({"keys": [{**dev_key(d), "kid": f"k{i}"} for i in range(51)]}),
        "51 keys, at most 50",
    ),
    (
        "over the size cap",
        "jwks",
        lambda d, _r: doc({"keys": [dev_key(d)], "pad": "x" * 300_000}),
        "at most 262144 accepted",
    ),
    ("invalid utf-8", "jwks", b'{"keys": [], "x": "\xc3\x28"}', "is not UTF-8"),
    ("deep nesting", "jwks", b'{"keys": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests"),
    ("duplicate members", "jwks", b'{"keys": [], "keys": []}', 'duplicate key "keys"'),
    (
        "discovery names another issuer",
        "discovery",
        lambda d, _r: doc({"issuer": "https://evil.example", "jwks_uri": f"{d.base_url}/.well-known/jwks"}),
        "discovery document names issuer 'https://evil.example'",
    ),
    (
        "discovery issuer with a trailing slash",
        "discovery",
        lambda d, _r: doc({"issuer": d.issuer + "/", "jwks_uri": f"{d.base_url}/.well-known/jwks"}),
        "discovery document names issuer",
    ),
    (
        "jwks_uri on another host",
        "discovery",
        lambda d, _r: doc({"issuer": d.issuer, "jwks_uri": "https://evil.example/.well-known/jwks"}),
        "jwks_uri 'https://evil.example/.well-known/jwks' is not https on the issuer's host",
    ),
    (
        "jwks_uri redirects",
        "discovery",
        lambda d, r: doc({"issuer": d.issuer, "jwks_uri": f"{r}/jwks"}),
        "answered HTTP 302; redirects are not followed",
    ),
]


@pytest.mark.parametrize(("via", "body", "reason"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
async def test_garbage_is_refused_and_the_last_good_set_kept(via, body, reason, jw: JwksTest):
    dev = jw.dev
    path = jw.direct_issuers_file if via == "jwks" else jw.issuers_file
    async with (
        redirector(f"{dev.base_url}/.well-known/jwks") as redirect_url,
        jw.service(jw.env(path)) as rt,
        jw.nats() as nc,
    ):
        good = await jw.stored()
        dev.garbage = body if isinstance(body, bytes) else body(dev, redirect_url)
        dev.mode = "garbage"
        jwks_hits = dev.hits.get("jwks", 0)
        jw.clock.advance(COOLDOWN + 1)
        with capture_logs() as logs:
            reply = await jw.ask(nc, RefreshRequest(issuer=dev.issuer, kid="new"))
        assert isinstance(reply, KeySet)
        assert reply.keys == good.keys
        assert reply.fetched_at == good.fetched_at
        assert (await jw.read(nc, dev.issuer)).keys == good.keys
        [failed] = [e for e in logs if e["event"] == "jwks_fetch_failed"]
        assert reason in failed["reason"]
        assert failed["issuer"] == dev.issuer
        sample = {"issuer": dev.issuer, "result": "refused"}
        assert rt.registry.get_sample_value("trustpub_jwks_refresh_total", sample) == 1
        if via == "discovery":
            # Refused before the key set was asked for: a redirect was not followed either.
            assert dev.hits.get("jwks", 0) == jwks_hits


async def test_unusable_keys_are_dropped_and_the_good_one_kept(jw: JwksTest):
    dev = jw.dev
    async with jw.service(jw.env(jw.direct_issuers_file)) as rt, jw.nats() as nc:
        good = await jw.stored()
        extras = [oct_jwk("hmac"), rsa_private_jwk("leak"), rsa_jwk("small", bits=1024), {"kty": "RSA"}]
        dev.garbage = doc({"keys": [dev_key(dev), *extras]})
        dev.mode = "garbage"
        jw.clock.advance(COOLDOWN + 1)
        with capture_logs() as logs:
            reply = await jw.ask(nc, RefreshRequest(issuer=dev.issuer, kid="leak"))
        assert reply.keys == good.keys
        assert reply.fetched_at == jw.clock()
        dropped = [e["kid"] for e in logs if e["event"] == "jwks_key_dropped"]
        assert dropped == ["hmac", "leak", "small", ""]

        def count(name: str, **labels: str) -> float | None:
            return rt.registry.get_sample_value(name, {"issuer": dev.issuer, **labels})

        by_reason = [
            count("trustpub_jwks_keys_dropped_total", reason=r) for r in ("kty", "private", "key", "kid")
        ]
        assert by_reason == [1, 1, 1, 1]
        assert count("trustpub_jwks_refresh_total", result="unchanged") == 1
