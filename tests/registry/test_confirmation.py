"""Owners are confirmed (DESIGN.md; issue 12, item 8): a GitHub or GitLab publisher registered without
its owner's immutable id (--pin-on-first-use) mints nothing until an operator confirmed the id
its first token pinned. Registered, pinned, refused, confirmed: each step audited."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from deploy.devstack.issuer import GITHUB_ISSUER, GITLAB_ISSUER, gitlab_claims
from tests.support.migrations import database_before
from tests.support.registry import (
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

from trustpub.messages import InvalidPendingPublisher, InvalidPublisher
from trustpub.messages.v1 import MatchRequest, MintGrant
from trustpub.providers import gitlab
from trustpub.providers.rules import RegistrationError
from trustpub.registry import migrations
from trustpub.registry.owners import confirm_publisher
from trustpub.registry.pending import PendingPublisher
from trustpub.registry.pool import connect
from trustpub.registry.publishers import Publisher, add_project, add_publisher, get_publisher

AUDIENCE = "trustpub-test"


async def audit_rows(conn, publisher_id: str, kind: str) -> list:
    return await conn.fetch(
        "SELECT * FROM audit_events WHERE publisher_id = $1 AND kind = $2 ORDER BY id",
        uuid.UUID(publisher_id),
        kind,
    )


async def used(conn, claims) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT count(*) FROM used_tokens WHERE issuer = $1 AND token_key = $2",
            GITHUB_ISSUER,
            claims["jti"],
        )
    )


async def first_token_refused(registry, conn, cli) -> tuple[Publisher, str, MatchRequest]:
    """A publisher registered with --pin-on-first-use, and the first token: pins, mints nothing."""
    owner, project = unique("org"), unique("pkg")
    publisher = await register(
        conn, projects=[project], owner=owner, owner_id=None, repository_id=None, pin_on_first_use=True
    )
    assert publisher.needs_confirmation is True
    (created,) = await audit_rows(conn, publisher.id, "publisher.created")
    assert (created["detail"]["needs_confirmation"], created["detail"]["by"]) == (True, "test")
    code, out, _ = await cli("publisher", "list", "--project", project)
    assert (code, out.rstrip().endswith("state=awaiting-confirmation")) == (0, True)

    # What explain tells before any token: the pin it would make, and the refusal.
    first = match_request(claims_for(owner, owner_id="1001", repo_id="2002"))
    told = await explain(registry, first)
    assert (told.outcome, told.code) == ("refused", "invalid-publisher")
    assert told.description.startswith(
        "an exchange would pin owner_id 1001, repository_id 2002 and be refused:"
    )

    with pytest.raises(InvalidPublisher) as info:
        await match(registry, first)
    description = info.value.description
    assert description.startswith(
        f"valid token, but no corresponding publisher (the publisher {publisher.id} "
    )
    assert "was registered without its owner's id and mints nothing until an operator confirms" in description
    assert 'repository_owner_id "1001", the id its first token pinned' in description
    assert f"(trustpub publisher confirm {publisher.id} --owner-id 1001)" in description
    return publisher, project, first


async def test_first_token_pins_the_owner_id_and_mints_nothing(registry, conn, cli):
    publisher, _, first = await first_token_refused(registry, conn, cli)
    spec = (await get_publisher(conn, publisher.id)).spec
    assert (spec["owner_id"], spec["repository_id"]) == ("1001", "2002")
    (pinned,) = await audit_rows(conn, publisher.id, "publisher.pinned")
    assert (pinned["exchange_id"], pinned["mint_id"]) == (first.exchange_id, None)
    assert pinned["detail"]["owner_id"] == {"old": None, "new": "1001"}
    assert pinned["detail"]["needs_confirmation"] is True
    assert not await used(conn, first.token.claims)
    assert (
        await conn.fetchval("SELECT count(*) FROM mints WHERE publisher_id = $1", uuid.UUID(publisher.id))
        == 0
    )
    assert sample(registry, "trustpub_publishers_pinned_total", provider="github") == 1

    # Until confirmed: the same owner is refused (nothing pinned again), another owner id is
    # refused by the pinned id like any resurrected account.
    owner = first.token.claims["repository_owner"]
    with pytest.raises(InvalidPublisher, match="mints nothing until an operator confirms"):
        await match(registry, match_request(claims_for(owner)))
    with pytest.raises(InvalidPublisher) as info:
        await match(registry, match_request(claims_for(owner, owner_id="6666")))
    assert (
        'repository_owner_id "6666" does not match the registered owner id "1001"' in info.value.description
    )
    assert len(await audit_rows(conn, publisher.id, "publisher.pinned")) == 1


async def test_operator_sees_the_pinned_id_and_confirms_only_that_one(registry, conn, cli):
    publisher, project, first = await first_token_refused(registry, conn, cli)
    owner = first.token.claims["repository_owner"]
    code, out, err = await cli("publisher", "confirm", publisher.id)
    assert (code, out) == (2, "")
    assert f'its first token pinned owner id 1001 for owner "{owner}" at ' in err
    assert f"(exchange {first.exchange_id})" in err
    assert f"then run: trustpub publisher confirm {publisher.id} --owner-id 1001" in err
    code, _, err = await cli("publisher", "confirm", publisher.id, "--owner-id", "999")
    assert code == 2
    assert f"publisher {publisher.id} has owner id 1001, not 999" in err
    assert "register it again with --owner-id 999" in err
    code, _, err = await cli("publisher", "confirm", publisher.id, "--namespace-id", "1001")
    assert code == 2
    assert "a github publisher's owner is confirmed with --owner-id, not with --namespace-id" in err
    assert (await get_publisher(conn, publisher.id)).needs_confirmation is True

    code, out, err = await cli("publisher", "confirm", publisher.id, "--owner-id", "1001")
    assert (code, err) == (0, "")
    assert out.startswith(f"confirmed publisher {publisher.id}: owner id 1001; it mints from now on\n")
    assert "awaiting-confirmation" not in out
    (confirmed,) = await audit_rows(conn, publisher.id, "publisher.confirmed")
    assert confirmed["detail"]["owner_id"] == "1001"
    assert confirmed["detail"]["pinned_by"] == "first token"
    assert confirmed["detail"]["registrant"] == "test"
    assert confirmed["detail"]["by"].startswith("cli")
    code, out, _ = await cli("publisher", "list", "--project", project)
    assert "state=" not in out

    # The refused token was not used: presented again, it mints now.
    grant = await match(registry, match_request(first.token.claims))
    assert (grant.publisher_id, grant.projects) == (publisher.id, [project])
    code, out, _ = await cli("publisher", "confirm", publisher.id, "--json")
    assert (code, json.loads(out)["confirmed"]) == (0, False)


async def test_racing_first_tokens_pin_once_and_mint_nothing(registry, conn):
    owner = unique("org")
    publisher = await register(
        conn, projects=[unique("pkg")], owner=owner, owner_id=None, pin_on_first_use=True
    )
    reqs = [match_request(claims_for(owner, owner_id=str(3000 + i))) for i in range(6)]
    results = await asyncio.wait_for(
        asyncio.gather(*(match(registry, r) for r in reqs), return_exceptions=True), 30
    )
    assert all(isinstance(r, InvalidPublisher) for r in results), results
    assert not any(isinstance(r, MintGrant) for r in results)
    (pinned,) = await audit_rows(conn, publisher.id, "publisher.pinned")
    spec = (await get_publisher(conn, publisher.id)).spec
    assert spec["owner_id"] == pinned["detail"]["owner_id"]["new"]
    assert spec["owner_id"] in {r.token.claims["repository_owner_id"] for r in reqs}
    assert (
        await conn.fetchval("SELECT count(*) FROM mints WHERE publisher_id = $1", uuid.UUID(publisher.id))
        == 0
    )


async def test_operator_may_confirm_an_id_before_any_token(registry, conn, cli):
    owner = unique("org")
    publisher = await register(
        conn, projects=[unique("pkg")], owner=owner, owner_id=None, pin_on_first_use=True
    )
    code, _, err = await cli("publisher", "confirm", publisher.id)
    assert code == 2
    assert f'awaits its first token, which pins the owner id of owner "{owner}"' in err
    code, _, err = await cli("publisher", "confirm", publisher.id, "--owner-id", "12a")
    assert code == 2
    assert "--owner-id must be a numeric id" in err
    code, _, _ = await cli("publisher", "confirm", publisher.id, "--owner-id", "1001")
    assert code == 0
    (confirmed,) = await audit_rows(conn, publisher.id, "publisher.confirmed")
    assert confirmed["detail"]["pinned_by"] == "operator"
    assert (await get_publisher(conn, publisher.id)).spec["owner_id"] == "1001"
    with pytest.raises(InvalidPublisher, match='does not match the registered owner id "1001"'):
        await match(registry, match_request(claims_for(owner, owner_id="6666")))
    grant = await match(registry, match_request(claims_for(owner)))
    assert grant.publisher_id == publisher.id


async def test_pending_publisher_waits_for_its_confirmation_before_creating_the_project(registry, conn):
    owner, name, who = unique("org"), unique("brand-new"), unique("alice")
    pending = await register_pending(
        conn, project=name, owner=owner, registrant=who, owner_id=None, pin_on_first_use=True
    )
    assert pending.needs_confirmation is True
    (created,) = await audit_rows(conn, pending.id, "pending.created")
    assert created["detail"]["needs_confirmation"] is True

    first = match_request(claims_for(owner))
    with pytest.raises(InvalidPendingPublisher) as info:
        await match(registry, first)
    assert info.value.description.startswith(f"the pending publisher {pending.id} was registered without")
    assert f"(trustpub publisher confirm {pending.id} --owner-id 1001)" in info.value.description
    # Nothing created, the pending row holds the pinned id.
    assert await conn.fetchval("SELECT count(*) FROM projects WHERE name = $1", name) == 0
    row = await conn.fetchrow("SELECT * FROM pending_publishers WHERE id = $1", uuid.UUID(pending.id))
    assert (row["spec"]["owner_id"], row["needs_confirmation"]) == ("1001", True)
    (pinned,) = await audit_rows(conn, pending.id, "pending.pinned")
    assert pinned["detail"]["owner_id"] == {"old": None, "new": "1001"}
    assert sample(registry, "trustpub_audit_events_total", kind="pending.pinned") == 1

    with pytest.raises(RegistrationError, match="has owner id 1001, not 7"):
        await confirm_publisher(conn, pending.id, {"owner_id": "7"}, actor="op")
    done = await confirm_publisher(conn, pending.id, {"owner_id": "1001"}, actor="op")
    assert done.confirmed_now
    assert isinstance(done.publisher, PendingPublisher)
    (confirmed,) = await audit_rows(conn, pending.id, "pending.confirmed")
    assert (confirmed["detail"]["by"], confirmed["detail"]["registrant"]) == ("op", who)

    grant = await match(registry, match_request(first.token.claims))
    assert (grant.publisher_id, grant.projects) == (pending.id, [name])
    assert (await get_publisher(conn, pending.id)).needs_confirmation is False


async def test_gitlab_namespace_id_is_confirmed_the_same_way(registry, conn):
    ns, project = unique("grp"), unique("pkg")
    spec = gitlab.validate_spec(
        namespace=ns, project="proj", ci_config_path=".gitlab-ci.yml", pin_on_first_use=True
    )
    await add_project(conn, project)
    publisher, _ = await add_publisher(
        conn, new_publisher(gitlab.PROVIDER, spec, issuer=GITLAB_ISSUER), [project]
    )
    assert publisher.needs_confirmation

    def req():
        claims = gitlab_claims(AUDIENCE, namespace=ns, project="proj")
        return match_request(claims, issuer=GITLAB_ISSUER, provider="gitlab")

    with pytest.raises(InvalidPublisher) as info:
        await match(registry, req())
    assert 'confirms namespace_id "72", the id its first token pinned' in info.value.description
    assert f"(trustpub publisher confirm {publisher.id} --namespace-id 72)" in info.value.description
    with pytest.raises(RegistrationError, match="confirmed with --namespace-id, not with --owner-id"):
        await confirm_publisher(conn, publisher.id, {"owner_id": "72"})
    await confirm_publisher(conn, publisher.id, {"namespace_id": "72"}, actor="op")
    grant = await match(registry, req())
    assert grant.publisher_id == publisher.id


async def test_cli_registration_says_what_to_do_next(cli, conn):
    project, owner = unique("pkg"), unique("org")
    await cli("project", "add", project)
    code, out, err = await cli(
        "publisher", "add", "github", "--project", project, "--owner", owner, "--pin-on-first-use",
        "--repository", "demo", "--workflow", "release.yml", "--registrant", "alice",
    )  # fmt: skip
    assert (code, err) == (0, "")
    pid = out.splitlines()[0].removeprefix("created publisher ")
    assert "  ids          owner pinned by the first token, repository pinned on first use" in out
    assert (
        "  state        awaiting-confirmation: mints nothing until an operator confirms its owner's id" in out
    )
    assert "note: registered without --owner-id: its first token pins the id and is refused" in out
    assert f"trustpub publisher confirm {pid} --owner-id ID" in out
    (created,) = await audit_rows(conn, pid, "publisher.created")
    assert (created["detail"]["by"], created["detail"]["needs_confirmation"]) == ("alice", True)
    code, out, _ = await cli("publisher", "list", "--json")
    listed = {p["id"]: p for p in json.loads(out)}
    assert listed[pid]["needs_confirmation"] is True
    code, _, err = await cli("publisher", "confirm", str(uuid.uuid4()))
    assert (code, "no publisher with id" in err) == (2, True)
    # Google and ActiveState publishers have no owner id to confirm.
    email = f"{unique('sa')}@proj.iam.gserviceaccount.com"
    code, out, _ = await cli("publisher", "add", "google", "--project", project, "--email", email, "--json")
    google = json.loads(out)["publisher"]
    assert (code, google["needs_confirmation"]) == (0, False)
    code, out, _ = await cli("publisher", "confirm", google["id"])
    assert (code, out) == (0, f"publisher {google['id']} needs no confirmation\n")
    code, _, err = await cli("publisher", "confirm", google["id"], "--owner-id", "1")
    assert (code, "a google publisher has no owner id to confirm" in err) == (2, True)


async def test_migration_disables_publishers_registered_without_the_owner_id(pg_admin_url):
    async with database_before(pg_admin_url, "0007_publisher_confirmation") as url:
        conn = await asyncio.wait_for(connect(url), 10)
        try:
            insert = (
                "INSERT INTO publishers (provider, issuer, lookup_key, unique_key, spec) "
                "VALUES ($1, 'https://iss', 'o/r', $2, $3) RETURNING id"
            )
            ids = {
                name: await conn.fetchval(insert, provider, uuid.uuid4().hex, spec)
                for name, provider, spec in [
                    ("github-open", "github", {"owner": "o", "owner_id": None}),
                    ("github-pinned", "github", {"owner": "o", "owner_id": "1"}),
                    ("gitlab-open", "gitlab", {"namespace": "g"}),
                    ("google", "google", {"email": "e"}),
                ]
            }
            pending = await conn.fetchval(
                "INSERT INTO pending_publishers (provider, issuer, lookup_key, unique_key, spec, "
                "project_name, normalized_name, registrant, expires_at) VALUES ('github', 'https://iss', "
                "'o/r', $1, '{\"owner_id\": null}', 'p', 'p', 'r', now() + interval '1 day') RETURNING id",
                uuid.uuid4().hex,
            )
            applied = await asyncio.wait_for(migrations.apply(url), 30)
            assert "0007_publisher_confirmation" in applied
            flags = {
                r["id"]: r["needs_confirmation"]
                for r in await conn.fetch("SELECT id, needs_confirmation FROM publishers")
            }
            assert {name: flags[i] for name, i in ids.items()} == {
                "github-open": True,
                "github-pinned": False,
                "gitlab-open": True,
                "google": False,
            }
            assert await conn.fetchval(
                "SELECT needs_confirmation FROM pending_publishers WHERE id = $1", pending
            )
            audited = await conn.fetch("SELECT kind, publisher_id, detail FROM audit_events ORDER BY id")
            assert {(r["kind"], r["publisher_id"]) for r in audited} == {
                ("publisher.needs_confirmation", ids["github-open"]),
                ("publisher.needs_confirmation", ids["gitlab-open"]),
                ("pending.needs_confirmation", pending),
            }
            assert all(r["detail"]["by"] == "migration 0007_publisher_confirmation" for r in audited)
        finally:
            await conn.close()
