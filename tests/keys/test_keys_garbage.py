"""An identity provider answering garbage (DESIGN.md, "Keys of identity providers"), end to end: every kind is
refused by the jwks service, the last good set is kept, and known kids keep verifying."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from deploy.devstack.issuer import DevIssuer
from jwcrypto import jwk
from tests.support.keys import COOLDOWN, World, kids, refreshes, sample


def document(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def rsa_key(kid: str, *, bits: int = 2048, exponent: int = 65537) -> dict[str, Any]:
    private = rsa.generate_private_key(public_exponent=exponent, key_size=bits)
    out: dict[str, Any] = jwk.JWK.from_pyca(private.public_key()).export_public(as_dict=True)
    return out | {"kid": kid, "use": "sig", "alg": "RS256"}


def off_curve_key(kid: str) -> dict[str, Any]:
    """A P-256 public key with y moved off the curve: the invalid-curve attack's shape."""
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    out: dict[str, Any] = jwk.JWK.from_pyca(public).export_public(as_dict=True)
    y = int.from_bytes(jwk.base64url_decode(out["y"]), "big")
    out["y"] = jwk.base64url_encode(((y + 1) % (1 << 256)).to_bytes(32, "big"))
    return out | {"kid": kid, "use": "sig", "alg": "ES256"}


def dev_key(dev: DevIssuer) -> dict[str, Any]:
    return dev.keys[0].public_jwk()


# (id, the body the issuer serves as its key set, text of the reason the jwks service stores)
CASES: list[tuple[str, Any, str]] = [
    ("html-200", b"<html><body>We'll be right back</body></html>", "is not JSON"),
    ("empty-object", b"{}", "must have a 'keys' list"),
    ("empty-keys", b'{"keys": []}', "no usable key (0 listed"),
    ("off-curve-ec", lambda _d: document(off_curve_key("ec-1")), "not on P-256"),
    ("rsa-1024", lambda _d: document(rsa_key("small", bits=1024)), "1024-bit RSA modulus"),
    ("rsa-e-3", lambda _d: document(rsa_key("e3", exponent=3)), "RSA exponent 3"),
    ("oct", lambda _d: document({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0c2VjcmV0"}), "symmetric (oct)"),
    ("duplicate-kids", lambda d: document(dev_key(d), dev_key(d)), "two keys with kid 'dev-1'"),
    (
        "10-mb",
        lambda d: b'{"keys": [' + json.dumps(dev_key(d)).encode() + b"]" + b" " * 10_000_000 + b"}",
        "at most 262144",
    ),
    ("invalid-utf-8", b'{"keys": [{"kid": "\xff\xfe"}]}', "is not UTF-8"),
    ("100k-deep", b"[" * 100_000 + b"]" * 100_000, "nests"),
]


@pytest.mark.parametrize(("body", "reason"), [pytest.param(c[1], c[2], id=c[0]) for c in CASES])
async def test_f8_garbage_keeps_the_last_good_set(body, reason, world: World):
    dev = world.dev
    # The key set URL directly (no discovery document), so that the garbage reaches the key
    # set validation; ES256 allowed, so that the off-curve point is refused for being off
    # the curve, not for its algorithm.
    env = world.env(world.issuers_file(direct=True, algorithms=("RS256", "ES256")))
    async with world.both(env) as (jwks, verifier), world.nats() as nc:
        good = await world.stored(nc, dev.issuer)
        dev.garbage = body if isinstance(body, bytes) else body(dev)
        dev.mode = "garbage"
        world.advance(COOLDOWN + 1)

        # A token naming a new kid makes the jwks service fetch; the answer is refused.
        verdict = await world.verify(verifier, world.forged())
        assert verdict.code == "unavailable"
        assert refreshes(jwks, dev.issuer, "refused") == 1
        stored = await world.stored(nc, dev.issuer)
        assert stored is not None
        assert good is not None
        assert (stored.keys, stored.fetched_at) == (good.keys, good.fetched_at)
        assert reason in stored.last_error
        # Known kids keep verifying.
        assert (await world.verify(verifier, world.token())).verified
        assert sample(verifier, "trustpub_verifier_keys", issuer=dev.issuer) == 1


async def test_f8_unusable_keys_are_dropped_beside_good_ones(world: World):
    dev = world.dev
    env = world.env(world.issuers_file(direct=True, algorithms=("RS256", "ES256")))
    async with world.both(env) as (jwks, verifier), world.nats() as nc:
        extras = [off_curve_key("ec-1"), rsa_key("small", bits=1024), rsa_key("e3", exponent=3)]
        dev.garbage = document(dev_key(dev), *extras)
        dev.mode = "garbage"
        world.advance(COOLDOWN + 1)
        # The fetch succeeded (one usable key): an unknown kid is now the token's fault.
        verdict = await world.verify(verifier, world.token(key=world.attacker, kid="small"))
        assert verdict.code == "invalid-token"
        assert kids(await world.stored(nc, dev.issuer)) == ["dev-1"]
        assert (await world.verify(verifier, world.token())).verified
        assert sample(jwks, "trustpub_jwks_keys_dropped_total", issuer=dev.issuer, reason="key") == 3
