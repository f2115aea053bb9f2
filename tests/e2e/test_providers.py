"""All four providers end to end over HTTP, operator-registered issuers (GitHub Enterprise
Server, self-managed GitLab), pending publishers, the explain endpoint, and Trusted
Publishing switched off per provider.

Claim sets come from the DevIssuer helpers (deploy/devstack/issuer.py), each shaped
like its platform's documented tokens: GitLab's "OpenID Connect (OIDC) Authentication Using ID
Tokens" (docs.gitlab.com/ci/secrets/id_token_authentication/, "Token payload"), Google
Cloud's "Verify the identity of VMs" (cloud.google.com/compute/docs/instances/
verifying-instance-identity, "Token payload"), ActiveState's as PyPI reads them
(pypi/warehouse tests/unit/oidc/models/test_activestate.py), GitHub's "About security
hardening with OpenID Connect" (docs.github.com, example token).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from typing import Any

import asyncpg
import pytest
from deploy.devstack.issuer import (
    DevIssuer,
    SigningKey,
    activestate_claims,
    github_claims,
    gitlab_claims,
    google_claims,
)
from tests.support.e2e import GHES_ISSUER, SELF_MANAGED_GITLAB_ISSUER, mint, register
from tests.support.services import AUDIENCE
from tests.support.waiting import bounded

ACTOR_ID = "00000000-0000-1000-8000-000000000002"


def payload(token: str) -> dict[str, Any]:
    part = token.removeprefix("trustpub-").split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def cli(db: str, *args: str) -> None:
    """Run the operator's CLI (it runs its own event loop, hence the thread)."""
    assert await asyncio.wait_for(asyncio.to_thread(register, db, *args), 30) == 0, args


async def refused(http, stack, token: str, code: str, fragment: str) -> str:
    status, body, _ = await bounded(mint(http, stack, token))
    assert status == 422, body
    (error,) = body["errors"]
    assert error["code"] == code, error
    assert fragment in error["description"], error["description"]
    assert token not in error["description"]
    return str(error["description"])


async def explain(http, stack, token: Any) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{stack.base_url}/_/oidc/explain", data=json.dumps({"token": token})) as resp:
        return resp.status, await resp.json(content_type=None)


# --- GitLab ---------------------------------------------------------------------------------


class GitLab:
    """A GitLab project registered for this test only (with pinned ids), and its tokens."""

    def __init__(self, issuer: DevIssuer, namespace: str, project: str) -> None:
        self.issuer, self.namespace, self.project = issuer, namespace, project

    def claims(self, **kw: Any) -> dict[str, Any]:
        return gitlab_claims(
            AUDIENCE, issuer=self.issuer.issuer, namespace=self.namespace, project="proj", **kw
        )

    def token(self, **kw: Any) -> str:
        return self.issuer.token(self.claims(**kw))


@pytest.fixture
async def gitlab_publisher(stack, stack_env, gitlab_issuer) -> GitLab:
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    group, project = f"grp-{uuid.uuid4().hex[:8]}", f"pkg-{uuid.uuid4().hex[:8]}"
    await cli(db, "project", "add", project)
    await cli(
        db, "publisher", "add", "gitlab", "--project", project, "--project-path", f"{group}/proj",
        "--ci-config-path", ".gitlab-ci.yml", "--environment", "production",
        "--namespace-id", "72", "--project-id", "20", "--token-lifetime", "600",
    )  # fmt: skip
    return GitLab(gitlab_issuer, group, project)


async def test_gitlab_happy_path(http, stack, gitlab_publisher):
    started = time.time()
    status, body, _ = await bounded(mint(http, stack, gitlab_publisher.token()))
    assert status == 200, body
    claims = payload(body["token"])
    assert claims["projects"] == [gitlab_publisher.project]
    # The publisher's own token lifetime (--token-lifetime 600), not the service's 900.
    assert claims["exp"] - claims["iat"] == 600
    assert started + 600 - 5 <= body["expires"] <= time.time() + 601
    prov = claims["provenance"]
    assert (prov["provider"], prov["repository"], prov["workflow"]) == (
        "gitlab",
        f"{gitlab_publisher.namespace}/proj",
        ".gitlab-ci.yml",
    )
    assert prov["ref"] == "refs/heads/main"


GITLAB_RULES = [
    ("other project", {"project_path": "evil/proj"}, "invalid-publisher",
     "no trusted publisher is registered"),
    ("sub of another project", {"sub": "project_path:evil/proj:ref_type:branch:ref:main"},
     "invalid-publisher", 'does not begin with the registered "project_path:'),
    ("other pipeline file", "file", "invalid-publisher",
     'does not name the registered pipeline file ".gitlab-ci.yml"'),
    ("environment case", {"environment": "Production"}, "invalid-publisher",
     'environment "Production" does not match the registered environment "production"'),
    ("no environment", {"environment": None}, "invalid-publisher", 'the publisher requires "production"'),
    ("resurrected namespace", {"namespace_id": "73"}, "invalid-publisher",
     'namespace_id "73" does not match the registered namespace id "72"'),
    ("resurrected project", {"project_id": "21"}, "invalid-publisher",
     'project_id "21" does not match the registered project id "20"'),
    ("empty sha", {"sha": ""}, "invalid-publisher", "must both be non-empty"),
    ("missing claim", {"ref_path": None}, "invalid-publisher", "missing claim 'ref_path'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "change", "code", "fragment"), GITLAB_RULES, ids=[r[0] for r in GITLAB_RULES]
)
async def test_each_gitlab_rule_refuses_with_its_description(
    http, stack, gitlab_publisher, case, change, code, fragment
):
    if change == "file":
        change = {
            "ci_config_ref_uri": f"gitlab.com/{gitlab_publisher.namespace}/proj//other.yml@refs/heads/main"
        }
    token = gitlab_publisher.token(**change)
    description = await refused(http, stack, token, code, fragment)
    assert description.startswith("valid token, but no corresponding publisher ("), case


# --- operator-registered issuers: self-managed GitLab, GitHub Enterprise Server -----------------


async def test_self_managed_gitlab_matches_only_its_issuer(
    http, stack, stack_env, gitlab_issuer, selfmanaged_gitlab_issuer
):
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    group, project = f"sm-{uuid.uuid4().hex[:8]}", f"pkg-{uuid.uuid4().hex[:8]}"
    await cli(db, "project", "add", project)
    await cli(
        db, "publisher", "add", "gitlab", "--project", project, "--project-path", f"{group}/proj",
        "--ci-config-path", ".gitlab-ci.yml", "--namespace-id", "72", "--issuer", SELF_MANAGED_GITLAB_ISSUER,
    )  # fmt: skip
    mine = GitLab(selfmanaged_gitlab_issuer, group, project)
    claims = mine.claims()
    assert claims["ci_config_ref_uri"].startswith(f"gitlab.example.test/{group}/proj//")
    status, body, _ = await bounded(mint(http, stack, mine.token()))
    assert status == 200, body
    assert payload(body["token"])["provenance"]["issuer"] == SELF_MANAGED_GITLAB_ISSUER

    # The same claims signed by gitlab.com (a real, configured issuer) match nothing.
    same_from_gitlab_com = {**mine.claims(), "iss": gitlab_issuer.issuer}
    await refused(
        http,
        stack,
        gitlab_issuer.token(same_from_gitlab_com),
        "invalid-publisher",
        f"no trusted publisher is registered for GitLab project {group}/proj",
    )
    # Nor does a token that claims the self-managed issuer but is signed with another's key.
    forged = selfmanaged_gitlab_issuer.token(mine.claims(), key=gitlab_issuer.signing_key)
    await refused(http, stack, forged, "invalid-token", "")


async def test_ghes_matches_only_its_issuer(http, stack, stack_env, e2e_issuer, ghes_issuer):
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    owner, project = f"ent-{uuid.uuid4().hex[:8]}", f"pkg-{uuid.uuid4().hex[:8]}"
    await cli(db, "project", "add", project)
    await cli(
        db, "publisher", "add", "github", "--project", project, "--owner", owner, "--owner-id", "1001",
        "--repository", "demo", "--workflow", "release.yml", "--issuer", GHES_ISSUER,
    )  # fmt: skip

    def claims(issuer: DevIssuer) -> dict[str, Any]:
        return github_claims(AUDIENCE, issuer=issuer.issuer, owner=owner)

    # GHES tokens are shaped like github.com's (workflow_ref etc.), under the instance's iss.
    status, body, _ = await bounded(mint(http, stack, ghes_issuer.token(claims(ghes_issuer))))
    assert status == 200, body
    assert payload(body["token"])["projects"] == [project]
    # The same repository on github.com is another identity: no publisher for it.
    await refused(
        http,
        stack,
        e2e_issuer.token(claims(e2e_issuer)),
        "invalid-publisher",
        f"no trusted publisher is registered for repository {owner}/demo",
    )


# --- Google ---------------------------------------------------------------------------------


async def test_google_happy_path_and_single_use_by_hash(http, stack, stack_env, google_issuer):
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    email = f"sa-{uuid.uuid4().hex[:8]}@my-project.iam.gserviceaccount.com"
    project = f"pkg-{uuid.uuid4().hex[:8]}"
    await cli(db, "project", "add", project)
    await cli(db, "publisher", "add", "google", "--project", project, "--email", email, "--sub", "1234567890")
    token = google_issuer.token(google_claims(AUDIENCE, email=email, sub="1234567890"))

    status, body, _ = await bounded(mint(http, stack, token))
    assert status == 200, body
    assert payload(body["token"])["provenance"]["email"] == email
    # No jti: the token is single-use by the SHA-256 of its signing input.
    key = "sha256:" + hashlib.sha256(token.rsplit(".", 1)[0].encode()).hexdigest()
    conn = await asyncpg.connect(db, timeout=5)
    try:
        assert await conn.fetchval("SELECT count(*) FROM used_tokens WHERE token_key = $1", key) == 1
    finally:
        await conn.close()
    await refused(http, stack, token, "invalid-reuse-token", "invalid token: already used")

    cases = [
        ({"email_verified": False}, "email_verified must be the JSON value true, the token carried false"),
        ({"email_verified": "true"},
         'email_verified must be the JSON value true, the token carried the string "true"'),
        ({"sub": "999"}, 'sub "999" does not match the registered subject "1234567890"'),
        ({"email": "other@my-project.iam.gserviceaccount.com"},
         "no trusted publisher is registered for service account"),
    ]  # fmt: skip
    for change, fragment in cases:
        claims = {**google_claims(AUDIENCE, email=email, sub="1234567890"), **change}
        await refused(http, stack, google_issuer.token(claims), "invalid-publisher", fragment)


# --- ActiveState ----------------------------------------------------------------------------


async def test_activestate_happy_path_and_rules(http, stack, stack_env, activestate_issuer):
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    org, project = f"org-{uuid.uuid4().hex[:8]}", f"pkg-{uuid.uuid4().hex[:8]}"
    await cli(db, "project", "add", project)
    await cli(
        db, "publisher", "add", "activestate", "--project", project, "--organization", org,
        "--activestate-project", "my-proj", "--actor-id", ACTOR_ID,
    )  # fmt: skip

    def claims(**kw: Any) -> dict[str, Any]:
        return activestate_claims(
            AUDIENCE, **{"organization": org, "project": "my-proj", "actor_id": ACTOR_ID, **kw}
        )

    status, body, _ = await bounded(mint(http, stack, activestate_issuer.token(claims())))
    assert status == 200, body
    assert payload(body["token"])["provenance"]["repository"] == f"{org}/my-proj"
    cases = [
        ({"builder": "other"}, 'builder "other" is not "pypi-publisher"'),
        ({"actor_id": "00000000-0000-1000-8000-000000000009"}, "is not the registered actor id"),
        ({"sub": f"org:{org}:project:other"}, "does not begin with the registered"),
        ({"sub": "nonsense"}, "is not of the form org:ORGANIZATION:project:PROJECT"),
    ]
    for change, fragment in cases:
        await refused(http, stack, activestate_issuer.token(claims(**change)), "invalid-publisher", fragment)


# --- pending publishers ---------------------------------------------------------------------


async def test_pending_publisher_creates_its_project_on_first_use(http, stack, stack_env, e2e_issuer):
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    owner, name = f"new-{uuid.uuid4().hex[:8]}", f"Brand.New-{uuid.uuid4().hex[:8]}"
    await cli(
        db, "publisher", "add", "github", "--pending-project", name, "--registrant", f"alice-{owner}",
        "--owner", owner, "--owner-id", "1001", "--repository", "demo", "--workflow", "release.yml",
    )  # fmt: skip
    status, body, _ = await bounded(mint(http, stack, e2e_issuer.token(github_claims(AUDIENCE, owner=owner))))
    assert status == 200, body
    assert payload(body["token"])["projects"] == [name]
    conn = await asyncpg.connect(db, timeout=5)
    try:
        assert (
            await conn.fetchval("SELECT created_by FROM projects WHERE name = $1", name) == f"alice-{owner}"
        )
    finally:
        await conn.close()
    # It is a normal publisher now: the next token mints for the same project.
    status, body, _ = await bounded(mint(http, stack, e2e_issuer.token(github_claims(AUDIENCE, owner=owner))))
    assert (status, payload(body["token"])["projects"]) == (200, [name])


async def test_pending_publisher_whose_project_exists(http, stack, stack_env, e2e_issuer):
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    owner, name = f"late-{uuid.uuid4().hex[:8]}", f"taken-{uuid.uuid4().hex[:8]}"
    await cli(
        db, "publisher", "add", "github", "--pending-project", name, "--registrant", "bob",
        "--owner", owner, "--owner-id", "1001", "--repository", "demo", "--workflow", "release.yml",
    )  # fmt: skip
    await cli(db, "project", "add", name)
    token = e2e_issuer.token(github_claims(AUDIENCE, owner=owner))
    await refused(
        http, stack, token, "invalid-pending-publisher", "valid token, but project already exists ("
    )
    # The pending publisher is gone: the same token now finds no publisher at all.
    await refused(http, stack, token, "invalid-publisher", "no trusted publisher is registered")


# --- owners confirmed (DESIGN.md, "Owners are confirmed") ---------------------------------


async def test_publisher_without_owner_id_mints_once_an_operator_confirmed(
    http, stack, stack_env, e2e_issuer
):
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    owner, project = f"open-{uuid.uuid4().hex[:8]}", f"pkg-{uuid.uuid4().hex[:8]}"
    await cli(db, "project", "add", project)
    await cli(
        db, "publisher", "add", "github", "--project", project, "--owner", owner, "--pin-on-first-use",
        "--repository", "demo", "--workflow", "release.yml",
    )  # fmt: skip
    token = e2e_issuer.token(github_claims(AUDIENCE, owner=owner))
    description = await refused(
        http,
        stack,
        token,
        "invalid-publisher",
        'operator confirms repository_owner_id "1001", the id its first',
    )
    publisher_id = description.split("(the publisher ", 1)[1].split(" ", 1)[0]
    assert f"trustpub publisher confirm {publisher_id} --owner-id 1001" in description
    # Still refused until confirmed; confirming asks for the id, then takes it.
    await refused(http, stack, token, "invalid-publisher", "mints nothing until an operator confirms")
    assert await asyncio.to_thread(register, db, "publisher", "confirm", publisher_id) == 2
    await cli(db, "publisher", "confirm", publisher_id, "--owner-id", "1001")
    # The same token was never spent: it mints now.
    status, body, _ = await bounded(mint(http, stack, token))
    assert status == 200, body
    claims = payload(body["token"])
    assert (claims["sub"], claims["projects"]) == (publisher_id, [project])


# --- explain --------------------------------------------------------------------------------


async def test_explain_reports_every_rule_and_consumes_nothing(http, stack, publisher, e2e_issuer):
    bad = publisher.token(environment="staging")
    status, report = await bounded(explain(http, stack, bad))
    assert status == 200, report
    assert report["outcome"] == "refused"
    assert report["code"] == "invalid-publisher"
    assert report["token"] == {
        "issuer": e2e_issuer.issuer,
        "provider": "github",
        "identity": f"repository {publisher.owner}/demo",
        "used": False,
    }
    (candidate,) = report["publishers"]
    assert candidate["projects"] == [publisher.project]
    assert (candidate["passed"], candidate["chosen"], candidate["pending"]) == (False, False, False)
    env = next(r for r in candidate["rules"] if r["rule"] == "environment")
    assert env == {
        "rule": "environment",
        "ok": False,
        "expected": "release",
        "actual": "staging",
        "description": 'environment "staging" does not match the registered environment "release"',
    }
    assert all(r["ok"] for r in candidate["rules"] if r["rule"] != "environment")
    # What mint-token answers is the report's description.
    description = await refused(http, stack, bad, "invalid-publisher", "staging")
    assert description == report["description"]

    good = publisher.token()
    status, report = await bounded(explain(http, stack, good))
    assert (status, report["outcome"], report["code"]) == (200, "would-mint", None)
    assert report["publishers"][0]["chosen"] is True
    assert good not in json.dumps(report)
    # Explaining did not consume the token id: the same token mints.
    status, body, _ = await bounded(mint(http, stack, good))
    assert status == 200, body
    status, report = await bounded(explain(http, stack, good))
    assert (report["outcome"], report["code"], report["token"]["used"]) == (
        "refused",
        "invalid-reuse-token",
        True,
    )


async def test_explain_refuses_unverified_tokens_as_usual(http, stack, publisher, e2e_issuer):
    forged = e2e_issuer.token(publisher.claims(), key=SigningKey.generate(e2e_issuer.signing_key.kid))
    status, body = await bounded(explain(http, stack, forged))
    assert status == 422
    assert body["errors"][0]["code"] == "invalid-token"
    assert "signature does not verify" in body["errors"][0]["description"]
    status, body = await bounded(explain(http, stack, 12))
    assert (status, body["errors"][0]["code"]) == (422, "invalid-payload")


# --- switched off per provider -------------------------------------------------------------


async def test_not_enabled_per_provider(
    http, stack, publisher, gitlab_publisher, activestate_issuer, google_issuer
):
    """A verifier with some providers switched off answers not-enabled for them only."""
    tokens = {
        "github": publisher.token,
        "gitlab": gitlab_publisher.token,
        "activestate": lambda: activestate_issuer.token(activestate_claims(AUDIENCE)),
        "google": lambda: google_issuer.token(google_claims(AUDIENCE)),
    }
    stack.stop("verifier")
    try:
        for off in (("gitlab", "activestate"), ("github", "google")):
            replica = "-off-" + "-".join(off)
            stack.start("verifier", replica=replica, extra={"TRUSTPUB_DISABLED_PROVIDERS": ",".join(off)})
            try:
                for provider, token in tokens.items():
                    status, body, _ = await bounded(mint(http, stack, token()))
                    (error,) = body.get("errors", [{"code": None}])
                    if provider in off:
                        assert status == 422, (provider, body)
                        assert error == {
                            "code": "not-enabled",
                            "description": f"{provider} trusted publishing functionality not enabled",
                        }
                    else:
                        # Not switched off: verified, then judged (google/activestate have no publisher here).
                        assert error["code"] != "not-enabled", (provider, body)
            finally:
                stack.stop(f"verifier{replica}")
    finally:
        stack.start("verifier")
    status, body, _ = await bounded(mint(http, stack, gitlab_publisher.token()))
    assert status == 200, body
