"""``trustpub publisher add`` for GitLab, Google and ActiveState, constraints, issuers, and
pending publishers (``--pending-project``)."""

from __future__ import annotations

import json
import uuid

import pytest
from tests.support.registry import unique

ACTOR_ID = "00000000-0000-1000-8000-000000000002"


async def test_gitlab_google_activestate_add_and_list(cli):
    project = unique("pkg")
    assert (await cli("project", "add", project))[0] == 0
    group = unique("grp")
    code, out, err = await cli(
        "publisher", "add", "gitlab", "--project", project,
        "--project-path", f"{group}/sub/proj", "--ci-config-path", "ci/release.yml", "--namespace-id", "72",
        "--environment", "Production", "--allow-ref", "refs/tags/v*", "--token-lifetime", "600",
        "--issuer", "https://gitlab.example.test", "--json",
    )  # fmt: skip
    assert (code, err) == (0, "")
    gl = json.loads(out)["publisher"]
    assert gl["spec"] == {
        "namespace": f"{group}/sub",
        "project": "proj",
        "ci_config_path": "ci/release.yml",
        "environment": "Production",
        "namespace_id": "72",
        "project_id": None,
        "allowed_refs": ["refs/tags/v*"],
        "token_lifetime": 600,
    }
    assert gl["issuer"] == "https://gitlab.example.test"

    email = f"{unique('sa')}@proj.iam.gserviceaccount.com"
    code, out, err = await cli("publisher", "add", "google", "--project", project, "--email", email)
    assert (code, err) == (0, "")
    assert "warning: no sub registered" in out
    code, out, _ = await cli(
        "publisher", "add", "activestate", "--project", project, "--organization", unique("org"),
        "--activestate-project", "my-proj", "--actor-id", ACTOR_ID, "--actor", "someone",
    )  # fmt: skip
    assert code == 0
    assert f"actor id     {ACTOR_ID} (someone)" in out

    code, out, _ = await cli("publisher", "list", "--project", project)
    lines = out.splitlines()
    assert len(lines) == 3
    assert f"gitlab  {group}/sub/proj  ci/release.yml  env=Production" in lines[0]
    assert f"google  {email}  sub=*" in lines[1]
    assert "activestate  " in lines[2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gitlab", "--project-path", "proj", "--ci-config-path", ".gitlab-ci.yml"],
         "must be NAMESPACE/PROJECT"),
        (["gitlab", "--project-path", "grp/proj", "--ci-config-path", ".gitlab-ci.yml", "--namespace-id", "7",
          "--issuer", "https://token.actions.githubusercontent.com"], "gives github tokens, not gitlab ones"),
        (["gitlab", "--project-path", "grp/proj", "--ci-config-path", ".gitlab-ci.yml", "--namespace-id", "7",
          "--issuer", "http://gitlab.example.test"], "must be an https:// URL"),
        (["gitlab", "--project-path", "grp/proj", "--ci-config-path", ".gitlab-ci.yml"],
         "--namespace-id is required: the owner's immutable id"),
        (["github", "--owner", "o", "--repository", "r", "--workflow", "release.yml"],
         "--owner-id is required: the owner's immutable id"),
        (["github", "--owner", "o", "--owner-id", "1", "--repository", "r", "--workflow", "release.yml",
          "--pin-on-first-use"], "give either --owner-id or --pin-on-first-use, not both"),
        (["github", "--owner", "o", "--repository", "r", "--workflow", "release.yml", "--allow-ref", "main"],
         "must be a full ref name"),
        (["github", "--owner", "o", "--repository", "r", "--workflow", "release.yml",
          "--token-lifetime", "30"], "token lifetime must be 300 to 3600 seconds"),
        (["google", "--email", "nope"], "is not a service account e-mail"),
        (["activestate", "--organization", "o", "--activestate-project", "proj", "--actor-id", "bob"],
         "must be the ActiveState user's id"),
    ],
)  # fmt: skip
async def test_bad_registrations_exit_2(cli, args, message):
    code, out, err = await cli("publisher", "add", args[0], "--project", "P", *args[1:])
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert message in err


async def test_issuers_file_is_consulted(cli, tmp_path, monkeypatch):
    path = tmp_path / "issuers.toml"
    path.write_text('[[issuer]]\nissuer = "https://ghes.example.test/_services/token"\nprovider = "github"\n')
    monkeypatch.setenv("TRUSTPUB_ISSUERS_FILE", str(path))
    base = [
        "publisher",
        "add",
        "gitlab",
        "--project",
        "P",
        "--project-path",
        "grp/proj",
        "--ci-config-path",
        "a.yml",
        "--namespace-id",
        "7",
    ]
    code, _, err = await cli(*base, "--issuer", "https://ghes.example.test/_services/token")
    assert code == 2
    assert "gives github tokens, not gitlab ones" in err
    code, _, err = await cli(*base, "--issuer", "https://gitlab.unknown.test")
    assert code == 2
    assert "is not configured in" in err


async def test_pending_add_list_remove(cli, conn, monkeypatch):
    name, who, owner = unique("brand-new"), unique("alice"), unique("org")
    base = [
        "publisher",
        "add",
        "github",
        "--owner",
        owner,
        "--owner-id",
        "1001",
        "--repository",
        "demo",
        "--workflow",
        "release.yml",
    ]
    code, _, err = await cli(*base, "--pending-project", name)
    assert code == 2
    assert "a pending publisher needs --registrant WHO" in err
    code, _, err = await cli(*base, "--pending-project", name, "--project", "x", "--registrant", who)
    assert code == 2
    assert "either --project" in err

    code, out, err = await cli(*base, "--pending-project", name, "--registrant", who, "--json")
    assert (code, err) == (0, "")
    added = json.loads(out)
    assert added["pending"] is True
    pending = added["publisher"]
    assert (pending["pending_project"], pending["registrant"]) == (name, who)
    code, out, _ = await cli(*base, "--pending-project", unique("other"), "--registrant", who)
    assert code == 2
    assert "pending already for project" in out + _

    code, out, _ = await cli("publisher", "list", "--pending")
    (line,) = [x for x in out.splitlines() if x.startswith(pending["id"])]
    assert f"pending={name}  expires=" in line

    # The limit comes from TRUSTPUB_MAX_PENDING_PER_REGISTRANT.
    monkeypatch.setenv("TRUSTPUB_MAX_PENDING_PER_REGISTRANT", "1")
    other = [
        "publisher",
        "add",
        "gitlab",
        "--project-path",
        f"{unique('g')}/proj",
        "--ci-config-path",
        "a.yml",
        "--namespace-id",
        "7",
    ]
    code, _, err = await cli(*other, "--pending-project", unique("second"), "--registrant", who)
    assert code == 2
    assert "holds 1 pending publishers already, the limit (TRUSTPUB_MAX_PENDING_PER_REGISTRANT=1)" in err

    code, out, err = await cli("publisher", "remove", pending["id"])
    assert (code, err) == (0, "")
    assert out.startswith(f"removed pending publisher {pending['id']}\n")
    assert (
        await conn.fetchval("SELECT count(*) FROM pending_publishers WHERE id = $1", uuid.UUID(pending["id"]))
        == 0
    )
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM audit_events WHERE kind = 'pending.removed' AND publisher_id = $1",
            uuid.UUID(pending["id"]),
        )
        == 1
    )
