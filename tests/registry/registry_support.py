"""Helpers for the registry tests: names unique to a test, publishers, verified tokens."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

from trustpub.devstack.issuer import GITHUB_ISSUER, github_claims
from trustpub.messages.v1 import MatchRequest, VerifiedToken
from trustpub.providers import github
from trustpub.registry import db

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
