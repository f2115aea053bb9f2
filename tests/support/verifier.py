"""Calling the verifier directly (no NATS): a verifier over real keys, tokens signed with
them, and the refusal a token gets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from deploy.devstack.issuer import SigningKey, compact
from tests.support.services import AUDIENCE

from trustpub.messages import TrustpubError
from trustpub.messages.v1 import KeySet
from trustpub.providers.issuers import ACTIVESTATE, GITHUB, GITLAB, GOOGLE, IssuerRegistry
from trustpub.verifier.config import Settings
from trustpub.verifier.keys import KeyCache
from trustpub.verifier.metrics import VerifierMetrics
from trustpub.verifier.verify import Verifier

# The header of a well-formed GitHub token signed with the "gh-1" key.
H0 = {"alg": "RS256", "kid": "gh-1", "typ": "JWT", "x5t": "dGVzdA"}


def make_verifier(
    keys: dict[str, SigningKey],
    *,
    disabled: tuple[str, ...] = (),
    metrics: VerifierMetrics | None = None,
    **settings: Any,
) -> Verifier:
    issuers = IssuerRegistry.load(None, disabled_providers=disabled)
    cache = KeyCache(issuers, metrics=metrics)
    for iss in (GITHUB, GITLAB, GOOGLE, ACTIVESTATE):
        cache.apply(KeySet(issuer=iss, keys=[keys[iss].public_jwk()], fetched_at=time.time()))
    return Verifier(Settings(audience=AUDIENCE, **settings), issuers, cache, metrics=metrics)


def sign(
    keys: dict[str, SigningKey],
    claims: dict[str, Any],
    header: dict[str, Any] | None = None,
    key: str = GITHUB,
) -> str:
    return compact(keys[key], H0 if header is None else header, claims)


async def rejected(verifier: Verifier, token: str, cls: type[TrustpubError]) -> str:
    with pytest.raises(TrustpubError) as info:
        await asyncio.wait_for(verifier.verify(token), 5)
    assert type(info.value) is cls, info.value.description
    return info.value.description
