"""Helpers of the tests that run the whole stack as processes (tests/e2e/conftest.py starts it):
a publisher of a test's own, registering with the ``trustpub`` command, and exchanging tokens
over HTTP."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import asyncpg
from deploy.devstack.issuer import DevIssuer, github_claims
from deploy.devstack.stack import Stack
from tests.support.services import AUDIENCE

from trustpub.registry import cli

# Operator-registered issuers played locally: a GitHub Enterprise Server and a self-managed
# GitLab instance (each with its own keys), next to the built-in GitLab, Google, ActiveState.
GHES_ISSUER = "https://ghes.example.test/_services/token"
SELF_MANAGED_GITLAB_ISSUER = "https://gitlab.example.test"


class Publisher:
    """A GitHub publisher registered for this test only, and tokens for it."""

    def __init__(self, issuer: DevIssuer, owner: str, repo: str, project: str, **spec: Any) -> None:
        self.issuer = issuer
        self.owner = owner
        self.repo = repo
        self.project = project
        self.spec = spec

    def claims(self, **overrides: Any) -> dict[str, Any]:
        return github_claims(
            AUDIENCE,
            issuer=self.issuer.issuer,
            owner=self.owner,
            repo=self.repo,
            owner_id=self.spec.get("owner_id", "1001"),
            **overrides,
        )

    def token(self, **overrides: Any) -> str:
        return self.issuer.token(self.claims(**overrides))


def register(database_url: str, *args: str) -> int:
    return cli.main([*args, "--database-url", database_url])


async def mint(
    http: aiohttp.ClientSession, stack: Stack, token: Any, path: str = "/_/oidc/mint-token"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with http.post(f"{stack.base_url}{path}", data=json.dumps({"token": token})) as resp:
        return resp.status, await resp.json(content_type=None), dict(resp.headers)


async def mints_count(database_url: str) -> int:
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM mints"))
    finally:
        await conn.close()
