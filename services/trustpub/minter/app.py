"""The minter service: signs scoped tokens for committed mint records, and checks upload
tokens presented for burning before the registry is asked to revoke them."""

from __future__ import annotations

import contextlib
import time
from typing import cast

import structlog
from prometheus_client import Counter

from trustpub.messages.endpoints import PROVENANCE_SIGN, TOKEN_BURN, TOKEN_KEYS, TOKEN_MINT
from trustpub.messages.v1 import (
    BurnRequest,
    KeysReply,
    KeysRequest,
    MintedToken,
    MintRequest,
    ProvenanceReply,
    ProvenanceSignRequest,
    RevokeRequest,
)
from trustpub.minter import keys
from trustpub.minter.config import Settings
from trustpub.minter.tokens import Signer
from trustpub.runtime import Forward, Runtime

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
        # Reached only with the registry's seal over this grant (TOKEN_MINT is sealed): the
        # registry committed the mint record and its audit row before sending it.
        grant = req.grant
        token = signer.mint(grant)
        minted.inc()
        log.debug(
            "token_minted", mint_id=grant.mint_id, publisher_id=grant.publisher_id, kid=signer.active.kid
        )
        return MintedToken(
            token=token,
            expires=grant.expires_at,
            mint_id=grant.mint_id,
            publisher_id=grant.publisher_id,
            projects=grant.projects,
            issuer=grant.issuer,
            provider=grant.provider,
        )

    async def public_keys(_: KeysRequest) -> KeysReply:
        return KeysReply(jwks=signer.jwks())

    async def burn(req: BurnRequest) -> Forward[RevokeRequest]:
        # Only a token this minter signed names a mint record to revoke.
        claims = signer.inspect(req.token)
        return Forward(RevokeRequest(mint_id=str(claims["jti"]), reason="burned"))

    async def sign_provenance(req: ProvenanceSignRequest) -> ProvenanceReply:
        # Reached only with the registry's seal (PROVENANCE_SIGN is sealed): a record it read
        # from its uploads table, not what a caller of the gate claims.
        return ProvenanceReply(found=True, jws=signer.statement(req.record, now=int(time.time())))

    rt.serve(TOKEN_MINT, mint)
    rt.serve(TOKEN_KEYS, public_keys)
    rt.serve(TOKEN_BURN, burn)
    rt.serve(PROVENANCE_SIGN, sign_provenance)
