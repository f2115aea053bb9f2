"""The minter over NATS: signing sealed grants, published keys, burning, key files."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator

import pytest
from jwcrypto import jwk, jws
from tests.support.bus import TestBus, hand_over
from tests.support.services import running
from tests.support.waiting import WAIT_S, until

from trustpub.messages import DEADLINE_HEADER, InvalidToken
from trustpub.messages.endpoints import MINT_REVOKE, TOKEN_BURN, TOKEN_KEYS, TOKEN_MINT
from trustpub.messages.v1 import (
    BurnRequest,
    KeysRequest,
    MintGrant,
    MintRequest,
    MintStatus,
    RevokeRequest,
    encode,
)
from trustpub.minter import keys
from trustpub.minter.app import setup
from trustpub.minter.config import Settings
from trustpub.minter.tokens import Signer
from trustpub.runtime import CommonSettings, Runtime, load


def grant(lifetime: int = 900) -> MintGrant:
    now = int(time.time())
    return MintGrant(
        mint_id="0b6c1c6e-4f0e-4a55-9a53-7c1c0de1a001",
        publisher_id="pub-1",
        projects=["demo-pkg", "demo-extra"],
        issued_at=now,
        expires_at=now + lifetime,
        provenance={"provider": "github", "repository": "octo-org/demo", "sha": "abc"},
        issuer="https://token.actions.githubusercontent.com",
        provider="github",
    )


def soon() -> float:
    return time.time() + WAIT_S


async def nothing(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
    pass


@contextlib.asynccontextmanager
async def as_service(name: str, common: dict[str, str]) -> AsyncIterator[Runtime]:
    """A runtime of ``name`` that serves nothing: the test plays that service."""
    async with running(Runtime(name, load(CommonSettings, common)), nothing) as rt:
        yield rt


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


async def test_a_sealed_grant_is_signed_and_verifies_against_the_published_keys(minter, common):
    g = grant()
    async with as_service("registry", common) as registry, as_service("gateway", common) as gateway:
        minted = await hand_over(registry, TOKEN_MINT, MintRequest(grant=g), answer_to=gateway)
        published = await gateway.call(TOKEN_KEYS, KeysRequest(), deadline=soon())
    assert minted.token.startswith("tp-")
    assert (minted.expires, minted.mint_id, minted.publisher_id) == (g.expires_at, g.mint_id, g.publisher_id)
    assert (minted.provider, minted.issuer, minted.projects) == ("github", g.issuer, g.projects)
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


async def test_an_unsealed_grant_is_refused_counted_and_never_signed(minter, bus: TestBus, subject_root):
    """The registry's NATS credentials alone (it may publish to token.mint) sign nothing."""
    rt, _ = minter
    async with (
        bus.connection("registry", subject_root) as nc,
        bus.connection("gateway", subject_root) as gateway,
    ):
        inbox = gateway.new_inbox()
        sub = await gateway.subscribe(inbox)
        await gateway.flush()
        for headers in ({DEADLINE_HEADER: f"{soon():.3f}"}, {"Trustpub-Seal": "v1 registry 0000 AAAA"}):
            await nc.publish(
                TOKEN_MINT.subject(subject_root),
                encode(MintRequest(grant=grant())),
                reply=inbox,
                headers=headers,
            )
        counter = rt.metrics.bus_refused
        await nc.flush()
        await until(
            lambda: (
                counter.labels("token.mint", "unsealed")._value.get() >= 1
                and counter.labels("token.mint", "unknown-key")._value.get() >= 1
            ),
            "the minter counted both refusals",
        )
        # Both were refused before anything was signed: the gateway's inbox got no answer.
        await gateway.flush()
        assert sub.pending_msgs == 0


async def test_burning_checks_the_token_then_asks_the_registry_sealed(minter, common):
    revoked: list[RevokeRequest] = []

    async def revoke(req: RevokeRequest) -> MintStatus:
        revoked.append(req)
        return MintStatus(mint_id=req.mint_id, known=True, revoked=True)

    async def serve_revoke(registry: Runtime, stack: contextlib.AsyncExitStack) -> None:
        registry.serve(MINT_REVOKE, revoke)

    settings = load(CommonSettings, common)
    async with (
        running(Runtime("registry", settings), serve_revoke) as registry,
        as_service("gateway", common) as gateway,
    ):
        minted = await hand_over(registry, TOKEN_MINT, MintRequest(grant=grant()), answer_to=gateway)
        status = await gateway.call(TOKEN_BURN, BurnRequest(token=minted.token), deadline=soon())
        assert status == MintStatus(mint_id=grant().mint_id, known=True, revoked=True)
        assert revoked == [RevokeRequest(mint_id=grant().mint_id, reason="burned")]
        with pytest.raises(InvalidToken, match="not a token minted by this service"):
            await gateway.call(TOKEN_BURN, BurnRequest(token="tp-garbage"), deadline=soon())
        old = MintGrant(mint_id="m", publisher_id="p", projects=[], issued_at=1, expires_at=2)
        expired = await hand_over(registry, TOKEN_MINT, MintRequest(grant=old), answer_to=gateway)
        with pytest.raises(InvalidToken, match="expired"):
            await gateway.call(TOKEN_BURN, BurnRequest(token=expired.token), deadline=soon())
    assert len(revoked) == 1  # neither garbage nor an expired token reached the registry


def test_inspect_accepts_own_tokens_and_refuses_others():
    signer = Signer(keys.parse(keys.generate()), prefix="tp-", issuer="trustpub", audience="index.example")
    token = signer.mint(grant())
    assert signer.inspect(token)["sub"] == "pub-1"
    head, payload, sig = token.removeprefix("tp-").split(".")
    forged_claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged_claims["projects"] = ["someone-else"]
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=").decode()
    other = Signer(keys.parse(keys.generate()), prefix="tp-", issuer="trustpub", audience="index.example")
    elsewhere = Signer(signer.keys, prefix="tp-", issuer="trustpub", audience="another-index")
    for bad, why in [
        (f"tp-{head}.{forged_payload}.{sig}", "token signature does not verify"),
        (f"tp-{head}.{payload}.{sig}=", "not a token minted by this service"),
        ("pypi-AgEIcHlwaS5vcmc", "not a token minted by this service"),
        ("tp-a.b", "not a token minted by this service"),
        (other.mint(grant()), "not a token minted by this service"),
        (elsewhere.mint(grant()), "not a token minted by this service"),
    ]:
        with pytest.raises(InvalidToken, match=why):
            signer.inspect(bad)


async def test_key_file_is_created_private_and_reused(minter, common):
    _, path = minter
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    async with as_service("gateway", common) as gateway:
        first = await gateway.call(TOKEN_KEYS, KeysRequest(), deadline=soon())
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
