"""The registry's explain endpoint (every rule of every candidate, nothing written),
per-publisher constraints (allowed refs, token lifetime), and GitLab id pinning."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from deploy.devstack.issuer import GITLAB_ISSUER, gitlab_claims
from tests.support.registry import (
    AUDIENCE,
    claims_for,
    explain,
    match,
    match_request,
    new_publisher,
    register,
    register_pending,
    sample,
    unique,
)

from trustpub.messages import InvalidPublisher
from trustpub.providers import gitlab
from trustpub.registry.publishers import add_project, add_publisher, get_publisher


async def counts(conn) -> tuple[int, int, int, int]:
    return (
        await conn.fetchval("SELECT count(*) FROM used_tokens"),
        await conn.fetchval("SELECT count(*) FROM mints"),
        await conn.fetchval("SELECT count(*) FROM audit_events WHERE kind <> 'exchange.explained'"),
        await conn.fetchval("SELECT count(*) FROM projects"),
    )


async def test_explain_would_mint_and_consumes_nothing(registry, conn):
    owner, project = unique("org"), unique("pkg")
    publisher = await register(conn, projects=[project], owner=owner, repository_id=None)
    req = match_request(claims_for(owner))
    before = await counts(conn)

    reply = await explain(registry, req)

    assert reply.outcome == "would-mint"
    assert reply.code == ""
    assert reply.description == f"an exchange would mint a token for {project}, valid 900 s"
    assert (reply.identity, reply.provider, reply.token_used) == (f"repository {owner}/demo", "github", False)
    assert reply.publisher_id == publisher.id
    (candidate,) = reply.candidates
    assert (candidate.publisher_id, candidate.chosen, candidate.passed, candidate.pending) == (
        publisher.id,
        True,
        True,
        False,
    )
    assert candidate.projects == [project]
    assert candidate.pins == {"repository_id": "2002"}
    rules = {r.rule: r for r in candidate.rules}
    assert rules["repository_id"].expected == "any (pinned on first use)"
    assert rules["workflow_ref"].actual == f"{owner}/demo/.github/workflows/release.yml@refs/tags/v1.0.0"
    assert all(r.ok for r in candidate.rules)

    # Nothing written but its audit row: no token id claimed, no mint, nothing pinned.
    assert await counts(conn) == before
    audit = await conn.fetchrow("SELECT * FROM audit_events WHERE exchange_id = $1", req.exchange_id)
    assert (audit["kind"], audit["outcome"], str(audit["publisher_id"])) == (
        "exchange.explained",
        "would-mint",
        publisher.id,
    )
    assert audit["detail"]["identity"] == f"repository {owner}/demo"
    assert (audit["detail"]["candidates"], audit["detail"]["reported_in_full"]) == (1, 1)
    assert (await get_publisher(conn, publisher.id)).spec["repository_id"] is None
    # The very same token still exchanges; explained afterwards, it is reported used.
    grant = await match(registry, req)
    assert grant.publisher_id == publisher.id
    used = await explain(registry, req)
    assert (used.outcome, used.code, used.token_used) == ("refused", "invalid-reuse-token", True)


async def test_explain_reports_in_full_only_the_publishers_the_token_was_meant_for(registry, conn):
    owner = unique("org")
    release = await register(conn, projects=[unique("pkg")], owner=owner, workflow="release.yml")
    secret_project = unique("unreleased")
    other = await register(
        conn, projects=[secret_project], owner=owner, workflow="deploy-prod.yml", environment=""
    )
    future = unique("future")
    await register_pending(
        conn, project=future, owner=owner, registrant=unique("ann"), workflow="nightly.yml"
    )
    # Another repository's publisher is never shown.
    stranger = await register(conn, projects=[unique("pkg")], owner=unique("org"))
    req = match_request(claims_for(owner, environment="staging"))

    reply = await explain(registry, req)

    assert reply.outcome == "refused"
    assert reply.code == "invalid-publisher"
    # The publisher for this workflow, in full: every rule, expected and actual.
    full = [c for c in reply.candidates if not c.withheld]
    assert [c.publisher_id for c in full] == [release.id]
    env = next(r for r in full[0].rules if r.rule == "environment")
    assert (env.ok, env.expected, env.actual) == (False, "release", "staging")
    assert env.description == 'environment "staging" does not match the registered environment "release"'
    assert len(full[0].rules) >= 10
    # The others (another workflow of the same repository, a pending publisher): that they
    # exist and which rule differs, nothing else: no id, project, pending name or workflow.
    withheld = [c for c in reply.candidates if c.withheld]
    assert len(withheld) == 2
    for c in withheld:
        assert (c.publisher_id, c.projects, c.pending_project, c.pins) == ("", [], "", {})
        assert [(r.rule, r.ok, r.expected, r.actual) for r in c.rules] == [("workflow_ref", False, "", "")]
    shown = msgspec.json.encode(reply).decode()
    for secret in (other.id, secret_project, future, "deploy-prod.yml", "nightly.yml", stranger.id):
        assert secret not in shown, secret
    assert "2 other publisher(s) of repository" in reply.description
    assert 'does not match the registered environment "release"' in reply.description
    assert not any(c.chosen for c in reply.candidates)
    # The exchange itself refuses the same token.
    with pytest.raises(InvalidPublisher):
        await match(registry, req)


async def test_explain_of_a_workflow_nobody_registered_names_nothing(registry, conn):
    owner = unique("org")
    await register(conn, projects=[unique("pkg")], owner=owner, workflow="release.yml")
    reply = await explain(registry, match_request(claims_for(owner, workflow="ci.yml")))
    assert reply.outcome == "refused"
    assert [c.withheld for c in reply.candidates] == [True]
    assert reply.description == (
        f"valid token, but no corresponding publisher (no publisher of repository {owner}/demo names "
        f"this token's workflow_ref; 1 other publisher(s) of repository {owner}/demo were registered "
        "for another workflow_ref)"
    )
    assert "release.yml" not in reply.description


async def test_explain_pending_and_malformed_tokens(registry, conn):
    owner, name = unique("org"), unique("future")
    pending = await register_pending(conn, project=name, owner=owner, registrant=unique("ann"))
    reply = await explain(registry, match_request(claims_for(owner)))
    assert reply.outcome == "would-create-project"
    assert f'would create project "{name}"' in reply.description
    (candidate,) = reply.candidates
    assert (candidate.pending, candidate.pending_project, candidate.publisher_id) == (True, name, pending.id)
    assert candidate.expires_at == int(pending.expires_at.timestamp())
    # Explaining created nothing.
    assert await conn.fetchval("SELECT count(*) FROM projects WHERE name = $1", name) == 0

    await add_project(conn, name)
    reply = await explain(registry, match_request(claims_for(owner)))
    assert (reply.outcome, reply.code) == ("refused", "invalid-pending-publisher")
    assert reply.description.startswith("valid token, but project already exists")
    # ... and did not remove the pending publisher either (only an exchange does).
    assert (
        await conn.fetchval("SELECT count(*) FROM pending_publishers WHERE id = $1", uuid.UUID(pending.id))
        == 1
    )

    broken = claims_for(owner)
    del broken["workflow_ref"]
    reply = await explain(registry, match_request(broken))
    assert (reply.outcome, reply.code, reply.candidates) == ("refused", "invalid-publisher", [])
    assert reply.description == "valid token, but no corresponding publisher (missing claim 'workflow_ref')"


async def test_token_lifetime_per_publisher(registry, conn):
    owner = unique("org")
    await register(conn, projects=[unique("pkg")], owner=owner, token_lifetime=600)
    grant = await match(registry, match_request(claims_for(owner)))
    assert grant.expires_at - grant.issued_at == 600
    mint = await conn.fetchrow(
        "SELECT issued_at, expires_at FROM mints WHERE id = $1", uuid.UUID(grant.mint_id)
    )
    assert (mint["expires_at"] - mint["issued_at"]).total_seconds() == 600
    reply = await explain(registry, match_request(claims_for(owner)))
    assert reply.candidates[0].token_lifetime == 600


async def test_allowed_refs_refusal_and_match(registry, conn):
    owner = unique("org")
    await register(conn, projects=[unique("pkg")], owner=owner, allowed_refs=["refs/tags/v*"])
    with pytest.raises(InvalidPublisher) as info:
        await match(registry, match_request(claims_for(owner, ref="refs/heads/main")))
    assert info.value.description == (
        "valid token, but no corresponding publisher "
        '(ref "refs/heads/main" is not among the allowed refs ("refs/tags/v*"))'
    )
    grant = await match(registry, match_request(claims_for(owner, ref="refs/tags/v3.1.4")))
    assert grant.provenance["ref"] == "refs/tags/v3.1.4"


async def test_gitlab_ids_pinned_on_first_use(registry, conn):
    ns = unique("grp")
    spec = gitlab.validate_spec(
        namespace=ns, project="proj", ci_config_path=".gitlab-ci.yml", environment="", namespace_id="72"
    )
    project = unique("pkg")
    await add_project(conn, project)
    publisher, _ = await add_publisher(
        conn, new_publisher(gitlab.PROVIDER, spec, issuer=GITLAB_ISSUER), [project]
    )

    def claims(**kw):
        return gitlab_claims(AUDIENCE, namespace=ns, project="proj", **kw)

    grant = await match(registry, match_request(claims(), issuer=GITLAB_ISSUER, provider="gitlab"))
    assert grant.publisher_id == publisher.id
    assert grant.provenance["repository"] == f"{ns}/proj"
    pinned = (await get_publisher(conn, publisher.id)).spec
    assert (pinned["namespace_id"], pinned["project_id"]) == ("72", "20")
    audit = await conn.fetchrow(
        "SELECT detail FROM audit_events WHERE kind = 'publisher.pinned' AND publisher_id = $1",
        uuid.UUID(publisher.id),
    )
    assert audit["detail"]["project_id"] == {"old": None, "new": "20"}
    assert "namespace_id" not in audit["detail"]
    assert sample(registry, "trustpub_publishers_pinned_total", provider="gitlab") == 1
    # A deleted and re-created namespace of the same name has another id: refused.
    with pytest.raises(InvalidPublisher) as info:
        await match(
            registry, match_request(claims(namespace_id="73"), issuer=GITLAB_ISSUER, provider="gitlab")
        )
    assert 'namespace_id "73" does not match the registered namespace id "72"' in info.value.description
