"""Introspection is bound to the mint record, and the gateway trusts only the minter keys it
is configured with.

An index asks ``POST /_/oidc/introspect`` whether an upload token may be used. ``active`` is
true only when a pinned minter key signed the token for this deployment's issuer and audience,
it has not expired, and its projects, publisher and expiry are exactly those of its mint
record, not revoked. The forgeries here are signed with the stack's real minter key (as a
minter bug, or a stolen key, would sign them): the signature alone is not enough.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.support.e2e import mint
from tests.support.waiting import bounded

from trustpub.gateway.minterkeys import MinterKeys
from trustpub.messages import InvalidToken, Unavailable
from trustpub.messages.text import unb64
from trustpub.messages.v1 import KeysReply, MintGrant
from trustpub.minter import keys as minter_keys
from trustpub.minter.tokens import Signer


def signer(stack_env: dict[str, str], **overrides: str) -> Signer:
    """The stack's own minter key, in the hands of the test."""
    keys = minter_keys.load("", Path(stack_env["TRUSTPUB_MINTER_KEY_FILE"]))
    settings = {"prefix": "trustpub-", "issuer": "trustpub", "audience": "trustpub-index", **overrides}
    return Signer(keys, **settings)


def claims_of(token: str) -> dict[str, Any]:
    payload = token.removeprefix("trustpub-").split(".")[1]
    return json.loads(unb64(payload))


async def introspect(http, stack, token: str) -> dict[str, Any]:
    async with http.post(f"{stack.base_url}/_/oidc/introspect", json={"token": token}) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_a_validly_signed_token_that_differs_from_its_mint_record_is_not_active(
    http, stack, stack_env, publisher
):
    status, body, _ = await bounded(mint(http, stack, publisher.token()))
    assert status == 200, body
    real = claims_of(body["token"])
    assert (await introspect(http, stack, body["token"]))["active"] is True
    grant = {
        "mint_id": real["jti"],
        "publisher_id": real["sub"],
        "projects": real["projects"],
        "issued_at": real["iat"],
        "expires_at": real["exp"],
        "provenance": real["provenance"],
    }
    forgeries = {
        "another project": {**grant, "projects": [*real["projects"], "someone-elses-project"]},
        "another publisher": {**grant, "publisher_id": str(uuid.uuid4())},
        "a longer life": {**grant, "expires_at": real["exp"] + 3600},
        "no mint record": {**grant, "mint_id": str(uuid.uuid4())},
    }
    key = signer(stack_env)
    for why, fields in forgeries.items():
        forged = key.mint(MintGrant(**fields))
        assert await introspect(http, stack, forged) == {"active": False}, why
    # Signed for another issuer or another index: not ours.
    for overrides in ({"issuer": "elsewhere"}, {"audience": "another-index"}):
        forged = signer(stack_env, **overrides).mint(MintGrant(**grant))
        assert await introspect(http, stack, forged) == {"active": False}, overrides
    # The real token is still active: nothing above touched its record.
    assert (await introspect(http, stack, body["token"]))["active"] is True


async def test_garbage_and_foreign_keys_never_introspect_active(http, stack, stack_env):
    other = Signer(
        minter_keys.parse(minter_keys.generate()),
        prefix="trustpub-",
        issuer="trustpub",
        audience="trustpub-index",
    )
    now = int(time.time())
    grant = MintGrant(
        mint_id=str(uuid.uuid4()), publisher_id="p", projects=["x"], issued_at=now, expires_at=now + 600
    )
    for token in ("garbage", "trustpub-a.b.c", other.mint(grant)):
        assert await introspect(http, stack, token) == {"active": False}


# --- the pinned keys, without a stack --------------------------------------------------------


def _keys_reply(*docs: dict[str, Any]) -> KeysReply:
    return KeysReply(jwks={"keys": list(docs)})


async def test_only_pinned_key_ids_are_served_and_a_pinned_id_pins_its_key_material():
    pinned = minter_keys.parse(minter_keys.generate())[0]
    extra = minter_keys.parse(minter_keys.generate())[0]
    impostor = dict(minter_keys.parse(minter_keys.generate())[0].public_jwk)
    impostor["kid"] = pinned.kid  # another key under the pinned id
    answers = [_keys_reply(extra.public_jwk, impostor), _keys_reply(pinned.public_jwk, extra.public_jwk)]

    async def fetch() -> KeysReply:
        return answers.pop(0)

    cache = MinterKeys((pinned.kid,), fetch, retry=0)
    with pytest.raises(Unavailable, match="none of the configured minter key ids"):
        await cache.jwks()
    assert await cache.jwks() == {"keys": [pinned.public_jwk]}
    token = Signer([pinned], prefix="tp-", issuer="i", audience="a").mint(
        MintGrant(
            mint_id="m", publisher_id="p", projects=["x"], issued_at=1, expires_at=int(time.time()) + 60
        )
    )
    answers.append(_keys_reply(pinned.public_jwk))
    assert (await cache.verify(token, prefix="tp-", issuer="i", audience="a"))["jti"] == "m"
    answers.append(_keys_reply(pinned.public_jwk))
    foreign = Signer([extra], prefix="tp-", issuer="i", audience="a").mint(
        MintGrant(
            mint_id="m", publisher_id="p", projects=["x"], issued_at=1, expires_at=int(time.time()) + 60
        )
    )
    with pytest.raises(InvalidToken):
        await cache.verify(foreign, prefix="tp-", issuer="i", audience="a")
