"""The minter service: signs scoped tokens for committed mint records."""

from __future__ import annotations

import contextlib
from typing import cast

import structlog
from prometheus_client import Counter

from trustpub.messages.v1 import (
    InspectReply,
    InspectRequest,
    KeysReply,
    KeysRequest,
    MintedToken,
    MintRequest,
)
from trustpub.minter import keys
from trustpub.minter.config import Settings
from trustpub.minter.tokens import Signer
from trustpub.runtime import Runtime

log = structlog.get_logger("trustpub.minter")


async def setup(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:  # noqa: ARG001
    settings = cast("Settings", rt.settings)
    signer = Signer(
        keys.load(settings.minter_key, settings.minter_key_file),
        prefix=settings.token_prefix,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
    )
    minted = Counter("trustpub_tokens_minted_total", "Upload tokens signed.", registry=rt.registry)

    async def mint(req: MintRequest) -> MintedToken:
        token = signer.mint(req.grant)
        minted.inc()
        log.info(
            "token_minted",
            mint_id=req.grant.mint_id,
            publisher_id=req.grant.publisher_id,
            projects=req.grant.projects,
            expires=req.grant.expires_at,
            kid=signer.active.kid,
        )
        return MintedToken(token=token, expires=req.grant.expires_at)

    async def public_keys(_: KeysRequest) -> KeysReply:
        return KeysReply(jwks=signer.jwks())

    async def inspect(req: InspectRequest) -> InspectReply:
        return InspectReply(claims=signer.inspect(req.token))

    rt.endpoint(rt.subjects.token_mint, MintRequest, mint)
    rt.endpoint(rt.subjects.token_keys, KeysRequest, public_keys)
    rt.endpoint(rt.subjects.token_inspect, InspectRequest, inspect)
