"""Helpers for the registry tests: names unique to a test, publishers, verified tokens."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

from trustpub.devstack.issuer import GITHUB_ISSUER, github_claims
from trustpub.messages.v1 import ExplainReply, ExplainRequest, MatchRequest, MintGrant, VerifiedToken
from trustpub.providers import github
from trustpub.registry import db
from trustpub.registry.config import Settings
from trustpub.runtime import Runtime, load

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
    existing = {p.normalized_name for p in await db.list_projects(conn)}
    for name in names:
        if db.normalize_name(name) not in existing:
            await db.add_project(conn, name, created_by="test")


async def register(
    conn: Any,
    *,
    projects: list[str],
    owner: str,
    issuer: str = GITHUB_ISSUER,
    **spec_fields: Any,
) -> db.Publisher:
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
    new = db.NewPublisher(
        provider="github",
        issuer=issuer,
        lookup_key=github.spec_lookup_key(spec),
        unique_key=github.unique_key(issuer, spec),
        spec=spec,
        merge=github.merge_spec,
        registrant="test",
    )
    publisher, _ = await db.add_publisher(conn, new, projects)
    return publisher


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an async predicate until it returns something truthy; bounded."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            msg = f"condition not met within {timeout} s"
            raise TimeoutError(msg)
        await asyncio.sleep(interval)


def new_publisher(
    module: Any, spec: dict[str, Any], *, issuer: str, registrant: str = "test"
) -> db.NewPublisher:
    """The registration of an already validated spec of any provider module."""
    return db.NewPublisher(
        provider=module.NAME,
        issuer=issuer,
        lookup_key=module.spec_lookup_key(spec),
        unique_key=module.unique_key(issuer, spec),
        spec=spec,
        merge=module.merge_spec,
        registrant=registrant,
    )


async def register_pending(
    conn: Any,
    *,
    project: str,
    owner: str,
    registrant: str,
    issuer: str = GITHUB_ISSUER,
    max_per_registrant: int = 3,
    **spec_fields: Any,
) -> db.PendingPublisher:
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
    new = new_publisher(github, github.validate_spec(**fields), issuer=issuer, registrant=registrant)
    return await db.add_pending_publisher(
        conn, new, project, ttl_days=30, max_per_registrant=max_per_registrant
    )


def make_registry(common: dict[str, str], database_url: str, **env: str) -> Runtime:
    settings = load(Settings, {**common, "TRUSTPUB_DATABASE_URL": database_url, **env})
    return Runtime("registry", settings)


async def match(rt: Runtime, req: MatchRequest) -> MintGrant:
    return await rt.request(rt.subjects.publisher_match, req, MintGrant, timeout=5)


async def explain(rt: Runtime, req: MatchRequest) -> ExplainReply:
    """Ask the registry to explain the token of ``req`` (a MatchRequest built by match_request)."""
    return await rt.request(
        rt.subjects.publisher_explain,
        ExplainRequest(exchange_id=req.exchange_id, token=req.token),
        ExplainReply,
        timeout=5,
    )


def sample(rt: Runtime, name: str, **labels: str) -> float:
    return rt.registry.get_sample_value(name, labels) or 0.0
