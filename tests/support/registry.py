"""Helpers for the registry tests: names unique to a test, publishers, verified tokens."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from deploy.devstack.issuer import GITHUB_ISSUER, github_claims
from tests.support.bus import hand_over
from tests.support.services import running
from tests.support.waiting import WAIT_S, until

from trustpub.messages.endpoints import (
    MINT_REVOKE,
    MINT_STATUS,
    PUBLISHER_EXPLAIN,
    PUBLISHER_MATCH,
    TOKEN_MINT,
)
from trustpub.messages.v1 import (
    ExplainReply,
    ExplainRequest,
    MatchRequest,
    MintedToken,
    MintGrant,
    MintRequest,
    MintStatus,
    MintStatusRequest,
    RevokeRequest,
    VerifiedToken,
)
from trustpub.providers import github
from trustpub.providers.base import Provider
from trustpub.registry.app import setup
from trustpub.registry.config import Settings
from trustpub.registry.pending import PendingPublisher, add_pending_publisher
from trustpub.registry.publishers import (
    NewPublisher,
    Publisher,
    add_project,
    add_publisher,
    list_projects,
    normalize_name,
)
from trustpub.runtime import CommonSettings, Runtime, load

AUDIENCE = "trustpub-test"


def unique(prefix: str) -> str:
    """A name no other test of the session uses (the database is shared)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def claims_for(owner: str, **kw: Any) -> dict[str, Any]:
    return github_claims(AUDIENCE, owner=owner, **kw)


def verified(
    claims: dict[str, Any], *, issuer: str = GITHUB_ISSUER, provider: str = "github"
) -> VerifiedToken:
    """What the verifier would reply for these claims (the message contract)."""
    raw = json.dumps(claims, sort_keys=True).encode()
    return VerifiedToken(
        issuer=issuer,
        provider=provider,
        claims=claims,
        token_key=claims["jti"],
        expires_at=claims["exp"],
        token_hash=hashlib.sha256(raw).hexdigest(),
    )


def match_request(claims: dict[str, Any], **kw: Any) -> MatchRequest:
    return MatchRequest(exchange_id=uuid.uuid4().hex, token=verified(claims, **kw))


async def ensure_projects(conn: Any, names: list[str]) -> None:
    existing = {p.normalized_name for p in await list_projects(conn)}
    for name in names:
        if normalize_name(name) not in existing:
            await add_project(conn, name, created_by="test")


async def register(
    conn: Any,
    *,
    projects: list[str],
    owner: str,
    issuer: str = GITHUB_ISSUER,
    **spec_fields: Any,
) -> Publisher:
    """A GitHub publisher (projects created as needed); spec defaults match github_claims."""
    await ensure_projects(conn, projects)
    fields: dict[str, Any] = {
        "owner": owner,
        "owner_id": "1001",
        "repository": "demo",
        "repository_id": "2002",
        "workflow": "release.yml",
        "environment": "release",
    }
    fields.update(spec_fields)
    spec = github.validate_spec(**fields)
    new = NewPublisher.of(github.PROVIDER, issuer, spec, "test")
    publisher, _ = await add_publisher(conn, new, projects)
    return publisher


async def wait_until(predicate: Any, timeout: float = WAIT_S, interval: float = 0.05) -> Any:
    """Poll an async predicate until it returns something truthy, and return that.

    Bounded by ``timeout``, never less than tests/support/waiting.WAIT_S: a budget matters only when
    the condition never comes, and a shorter one fails on a loaded machine."""
    return await until(
        predicate, getattr(predicate, "__name__", ""), timeout=max(timeout, WAIT_S), interval=interval
    )


def new_publisher(
    provider: Provider, spec: dict[str, Any], *, issuer: str, registrant: str = "test"
) -> NewPublisher:
    """The registration of an already validated spec of any provider."""
    return NewPublisher.of(provider, issuer, spec, registrant)


async def register_pending(
    conn: Any,
    *,
    project: str,
    owner: str,
    registrant: str,
    issuer: str = GITHUB_ISSUER,
    max_per_registrant: int = 3,
    **spec_fields: Any,
) -> PendingPublisher:
    """A pending GitHub publisher for ``project`` (which must not exist); spec defaults
    match github_claims."""
    fields: dict[str, Any] = {
        "owner": owner,
        "owner_id": "1001",
        "repository": "demo",
        "repository_id": "2002",
        "workflow": "release.yml",
        "environment": "release",
    }
    fields.update(spec_fields)
    new = new_publisher(github.PROVIDER, github.validate_spec(**fields), issuer=issuer, registrant=registrant)
    return await add_pending_publisher(conn, new, project, ttl_days=30, max_per_registrant=max_per_registrant)


def make_registry(common: dict[str, str], database_url: str, **env: str) -> Runtime:
    settings = load(Settings, {**common, "TRUSTPUB_DATABASE_URL": database_url, **env})
    return Runtime("registry", settings)


@dataclass
class Peers:
    """The registry's neighbours in the pipeline, played by the test: the verifier hands it
    verified tokens (sealed), the minter receives its grants (sealed) and hands it burns, and
    the gateway is where every answer goes."""

    verifier: Runtime
    minter: Runtime
    gateway: Runtime
    grants: dict[str, MintGrant] = field(default_factory=dict)


_PEERS: dict[int, Peers] = {}


def peers(rt: Runtime) -> Peers:
    return _PEERS[id(rt)]


async def _nothing(rt: Runtime, stack: contextlib.AsyncExitStack) -> None:
    pass


@contextlib.asynccontextmanager
async def registry_running(common: dict[str, str], database_url: str, **env: str) -> AsyncIterator[Runtime]:
    """The registry service in-process, with its peers played by the test (:class:`Peers`)."""
    rt = make_registry(common, database_url, **env)
    settings = load(CommonSettings, common)
    grants: dict[str, MintGrant] = {}

    async def mint(req: MintRequest) -> MintedToken:
        # Reached only with the registry's seal (the minter's adapter checks it).
        grants[req.grant.mint_id] = req.grant
        return MintedToken(
            token="signed by the minter", expires=req.grant.expires_at, mint_id=req.grant.mint_id
        )

    async def minter_setup(minter: Runtime, stack: contextlib.AsyncExitStack) -> None:
        minter.serve(TOKEN_MINT, mint)

    async with (
        running(rt, setup),
        running(Runtime("minter", settings), minter_setup) as minter,
        running(Runtime("verifier", settings), _nothing) as verifier,
        running(Runtime("gateway", settings), _nothing) as gateway,
    ):
        _PEERS[id(rt)] = Peers(verifier, minter, gateway, grants)
        try:
            yield rt
        finally:
            del _PEERS[id(rt)]


async def match(rt: Runtime, req: MatchRequest) -> MintGrant:
    """An exchange's second stage: the grant the registry committed and handed to the minter."""
    p = peers(rt)
    minted = await hand_over(
        p.verifier, PUBLISHER_MATCH, req, answer_to=p.gateway, exchange_id=req.exchange_id
    )
    return p.grants[minted.mint_id]


async def explain(rt: Runtime, req: MatchRequest) -> ExplainReply:
    """Ask the registry to explain the token of ``req`` (a MatchRequest built by match_request)."""
    p = peers(rt)
    request = ExplainRequest(exchange_id=req.exchange_id, token=req.token)
    reply: ExplainReply = await hand_over(p.verifier, PUBLISHER_EXPLAIN, request, answer_to=p.gateway)
    return reply


async def status(rt: Runtime, mint_id: str) -> MintStatus:
    """What introspection asks: the gateway's ``mint.status``."""
    return await peers(rt).gateway.call(
        MINT_STATUS, MintStatusRequest(mint_id=mint_id), deadline=time.time() + WAIT_S
    )


async def revoke(rt: Runtime, mint_id: str, reason: str = "burned") -> MintStatus:
    """What a burn ends with: the minter's sealed ``mint.revoke``, answered to the gateway."""
    p = peers(rt)
    reply: MintStatus = await hand_over(
        p.minter, MINT_REVOKE, RevokeRequest(mint_id=mint_id, reason=reason), answer_to=p.gateway
    )
    return reply


def sample(rt: Runtime, name: str, **labels: str) -> float:
    return rt.registry.get_sample_value(name, labels) or 0.0
