"""The minter over NATS: signing, published keys, inspection, key files."""

from __future__ import annotations

import base64
import json
import time

import pytest
from jwcrypto import jwk, jws
from tests.conftest import running

from trustpub.messages import InvalidToken
from trustpub.messages.v1 import (
    InspectReply,
    InspectRequest,
    KeysReply,
    KeysRequest,
    MintedToken,
    MintGrant,
    MintRequest,
)
from trustpub.minter import keys
from trustpub.minter.app import setup
from trustpub.minter.config import Settings
from trustpub.runtime import Runtime, load


def grant(lifetime: int = 900) -> MintGrant:
    now = int(time.time())
    return MintGrant(
        mint_id="0b6c1c6e-4f0e-4a55-9a53-7c1c0de1a001",
        publisher_id="pub-1",
        projects=["demo-pkg", "demo-extra"],
        issued_at=now,
        expires_at=now + lifetime,
        provenance={"provider": "github", "repository": "octo-org/demo", "sha": "abc"},
    )


@pytest.fixture
async def minter(common, tmp_path):
    env = {
        **common,
        "TRUSTPUB_MINTER_KEY_FILE": str(tmp_path / "minter" / "key.jwk"),
        "TRUSTPUB_TOKEN_PREFIX": "tp-",
        "TRUSTPUB_TOKEN_AUDIENCE": "index.example",
    }
    async with running(Runtime("minter", load(Settings, env)), setup) as rt:
        yield rt, tmp_path / "minter" / "key.jwk"


async def test_minted_token_verifies_against_published_keys(minter):
    rt, _ = minter
    g = grant()
    minted = await rt.request(rt.subjects.token_mint, MintRequest(grant=g), MintedToken, timeout=5)
    assert minted.token.startswith("tp-")
    assert minted.expires == g.expires_at
    published = await rt.request(rt.subjects.token_keys, KeysRequest(), KeysReply, timeout=5)
    (pub,) = published.jwks["keys"]
    assert pub["alg"] == "EdDSA"
    assert "d" not in pub
    token = jws.JWS()
    token.deserialize(minted.token.removeprefix("tp-"))
    token.verify(jwk.JWK(**pub), alg="EdDSA")
    claims = json.loads(token.payload)
    assert claims == {
        "iss": "trustpub",
        "aud": "index.example",
        "sub": "pub-1",
        "projects": ["demo-pkg", "demo-extra"],
        "iat": g.issued_at,
        "nbf": g.issued_at,
        "exp": g.expires_at,
        "jti": g.mint_id,
        "provenance": g.provenance,
    }


async def test_inspect_accepts_own_tokens_and_refuses_others(minter):
    rt, _ = minter
    minted = await rt.request(rt.subjects.token_mint, MintRequest(grant=grant()), MintedToken, timeout=5)
    reply = await rt.request(
        rt.subjects.token_inspect, InspectRequest(token=minted.token), InspectReply, timeout=5
    )
    assert reply.claims["sub"] == "pub-1"
    head, payload, sig = minted.token.removeprefix("tp-").split(".")
    forged_claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged_claims["projects"] = ["someone-else"]
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=").decode()
    for bad, why in [
        (f"tp-{head}.{forged_payload}.{sig}", "token signature does not verify"),
        (f"tp-{head}.{payload}.{sig}=", "not a token minted by this service"),
        ("pypi-AgEIcHlwaS5vcmc", "not a token minted by this service"),
        ("tp-a.b", "not a token minted by this service"),
    ]:
        with pytest.raises(InvalidToken, match=why):
            await rt.request(rt.subjects.token_inspect, InspectRequest(token=bad), InspectReply, timeout=5)


async def test_expired_token_is_not_inspectable(minter):
    rt, _ = minter
    old = MintGrant(mint_id="m", publisher_id="p", projects=[], issued_at=1, expires_at=2)
    minted = await rt.request(rt.subjects.token_mint, MintRequest(grant=old), MintedToken, timeout=5)
    with pytest.raises(InvalidToken, match="expired"):
        await rt.request(
            rt.subjects.token_inspect, InspectRequest(token=minted.token), InspectReply, timeout=5
        )


async def test_key_file_is_created_private_and_reused(minter, common):
    rt, path = minter
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    first = await rt.request(rt.subjects.token_keys, KeysRequest(), KeysReply, timeout=5)
    assert keys.load("", path)[0].kid == first.jwks["keys"][0]["kid"]


def test_key_set_rotation_publishes_old_keys(tmp_path):
    new, old = keys.generate(), keys.generate()
    doc = json.dumps({"keys": [json.loads(new), json.loads(old)]})
    loaded = keys.load(doc, None)
    assert len(loaded) == 2
    assert loaded[0].private is not None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "not JSON"),
        ('{"keys": []}', "no keys"),
        (json.dumps(json.loads(jwk.JWK.generate(kty="RSA", size=2048).export_private())), "Ed25519"),
        (jwk.JWK.generate(kty="OKP", crv="Ed25519").export_public(), "no private part"),
    ],
)
def test_unusable_key_material_is_refused_with_a_reason(text, why):
    with pytest.raises(keys.KeyError_, match=why):
        keys.parse(text)
