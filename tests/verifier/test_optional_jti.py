"""jti is required where the platform documents it, and used whenever a token carries one."""

from __future__ import annotations

import hashlib
import time

import pytest
from deploy.devstack.issuer import SigningKey, activestate_claims
from tests.support.services import AUDIENCE
from tests.support.verifier import make_verifier, rejected, sign

from trustpub.messages import InvalidToken
from trustpub.providers.issuers import ACTIVESTATE, GITHUB, GITLAB, GOOGLE

HEADER = {"alg": "RS256", "kid": "as-1", "typ": "JWT"}


@pytest.fixture(scope="module")
def verifier_and_keys():
    keys = {
        iss: SigningKey.generate(kid)
        for iss, kid in ((GITHUB, "gh-1"), (GITLAB, "gl-1"), (GOOGLE, "gg-1"), (ACTIVESTATE, "as-1"))
    }
    return make_verifier(keys), keys


async def test_activestate_token_without_jti_is_single_use_by_its_hash(verifier_and_keys):
    verifier, keys = verifier_and_keys
    claims = activestate_claims(AUDIENCE, now=int(time.time()))
    claims.pop("jti", None)
    token = sign(keys, claims, HEADER, key=ACTIVESTATE)
    result = await verifier.verify(token)
    signing_input = token.rsplit(".", 1)[0]
    assert result.token_key == "sha256:" + hashlib.sha256(signing_input.encode()).hexdigest()


async def test_activestate_jti_when_present_is_the_replay_key_and_must_be_well_formed(verifier_and_keys):
    verifier, keys = verifier_and_keys
    claims = activestate_claims(AUDIENCE, now=int(time.time()))
    claims["jti"] = "as-jti-1"
    result = await verifier.verify(sign(keys, claims, HEADER, key=ACTIVESTATE))
    assert result.token_key == "as-jti-1"
    claims["jti"] = 12
    description = await rejected(verifier, sign(keys, claims, HEADER, key=ACTIVESTATE), InvalidToken)
    assert "jti as an integer" in description
