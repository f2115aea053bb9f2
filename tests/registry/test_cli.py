"""The ``trustpub`` command line against the session's PostgreSQL."""

from __future__ import annotations

import json
import uuid

import pytest
from deploy.devstack.servers import free_port
from tests.support.registry import unique

from trustpub.registry.publishers import normalize_name


async def test_project_add_and_list(cli):
    name = unique("My.Pkg")
    code, out, err = await cli("project", "add", name)
    assert (code, err) == (0, "")
    assert out.startswith(f"added project {name} (")

    code, out, _ = await cli("project", "list", "--json")
    assert code == 0
    listed = {p["name"]: p for p in json.loads(out)}
    assert listed[name]["normalized_name"] == normalize_name(name)

    # The same project under another spelling is refused.
    code, out, err = await cli("project", "add", name.upper().replace(".", "_"))
    assert code == 2
    assert err.count("\n") == 1
    assert "exists already" in err


async def test_publisher_add_list_remove(cli, conn):
    owner = unique("org")
    p1, p2 = unique("pkg"), unique("pkg")
    for p in (p1, p2):
        assert (await cli("project", "add", p))[0] == 0

    code, out, err = await cli(
        "publisher", "add", "github",
        "--project", p1, "--project", p2,
        "--owner", owner, "--owner-id", "1001",
        "--repository", "demo",
        "--workflow", "release.yml",
        "--environment", "Release",
        "--allow-event", "workflow_run",
        "--registrant", "alice",
        "--json",
    )  # fmt: skip
    assert (code, err) == (0, "")
    added = json.loads(out)
    assert added["created"] is True
    publisher = added["publisher"]
    assert publisher["spec"]["environment"] == "release"
    assert publisher["spec"]["owner_id"] == "1001"
    assert publisher["spec"]["repository_id"] is None
    assert publisher["spec"]["allowed_events"] == ["workflow_run"]
    assert publisher["registrant"] == "alice"
    assert sorted(publisher["projects"]) == sorted([p1, p2])
    pid = publisher["id"]
    audit = await conn.fetchrow(
        "SELECT * FROM audit_events WHERE kind = 'publisher.created' AND publisher_id = $1", uuid.UUID(pid)
    )
    assert audit["detail"]["by"] == "alice"

    # The identical publisher for another project re-uses the row, as PyPI does.
    p3 = unique("pkg")
    await cli("project", "add", p3)
    code, out, _ = await cli(
        "publisher", "add", "github", "--project", p3, "--owner", owner.upper(), "--owner-id", "1001",
        "--repository", "Demo", "--workflow", "release.yml", "--environment", "release",
        "--allow-event", "workflow_run",
    )  # fmt: skip
    assert code == 0
    assert out.startswith(f"linked existing publisher {pid}\n")
    assert "release.yml" in out

    code, out, _ = await cli("publisher", "list", "--project", p3)
    assert code == 0
    assert out.count("\n") == 1
    assert out.startswith(f"{pid}  github  {owner}/demo  release.yml  env=release")

    code, out, _ = await cli("publisher", "list", "--json")
    assert pid in {p["id"] for p in json.loads(out)}

    code, out, err = await cli("publisher", "remove", pid)
    assert (code, err) == (0, "")
    assert out.startswith(f"removed publisher {pid}\n")
    assert "note: " in out
    assert await conn.fetchval("SELECT count(*) FROM publishers WHERE id = $1", uuid.UUID(pid)) == 0
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM audit_events WHERE kind = 'publisher.removed' AND publisher_id = $1",
            uuid.UUID(pid),
        )
        == 1
    )
    code, out, _ = await cli("publisher", "list", "--project", p1)
    assert (code, out) == (0, "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["publisher", "add", "github", "--project", "P", "--owner=-bad", "--repository", "r",
          "--workflow", "release.yml"], "is not a GitHub user or organization name"),
        (["publisher", "add", "github", "--project", "P", "--owner", "o", "--repository", "r",
          "--workflow", "release"], "must be a file name ending in .yml or .yaml"),
        (["publisher", "add", "github", "--project", "P", "--owner", "o", "--repository", "r",
          "--workflow", "release.yml", "--owner-id", "abc"], "numeric id"),
        (["publisher", "add", "github", "--project", "P", "--owner", "o", "--repository", "r",
          "--workflow", "release.yml", "--allow-event", "push"], "needs no allowing"),
        (["publisher", "add", "github", "--owner", "o", "--repository", "r", "--workflow", "release.yml"],
         "--project"),
        (["publisher", "add", "github", "--project", "P", "--owner", "o", "--owner-id", "1",
          "--repository", "r", "--workflow", "release.yml", "--environment", "PROD\u00dcCTION"],
         "U+00DC (LATIN CAPITAL LETTER U WITH DIAERESIS) at position 5 is not"),
        (["publisher", "add", "github", "--project", "P", "--owner", "o", "--owner-id", "1",
          "--repository", "r", "--workflow", "release.yml", "--environment", "\u212aeys"],
         "U+212A (KELVIN SIGN) at position 1 is not"),
        (["publisher", "remove", "not-a-uuid"], "is not a UUID"),
        (["publisher", "frobnicate"], "invalid choice"),
        (["project", "add", "bad name!"], "is not valid"),
        ([], "required"),
    ],
)  # fmt: skip
async def test_bad_input_exits_2_with_one_line(cli, args, message):
    code, out, err = await cli(*args)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("trustpub: error: ")
    assert message in err
    assert "Traceback" not in err


async def test_missing_project_names_the_command(cli):
    missing = unique("nope")
    code, _, err = await cli(
        "publisher", "add", "github", "--project", missing, "--owner", unique("org"), "--owner-id", "1",
        "--repository", "r", "--workflow", "release.yml",
    )  # fmt: skip
    assert code == 2
    assert f"trustpub project add {missing}" in err
    code, _, err = await cli("publisher", "list", "--project", missing)
    assert code == 2
    assert "does not exist" in err


async def test_unknown_publisher_id(cli):
    code, _, err = await cli("publisher", "remove", str(uuid.uuid4()))
    assert code == 2
    assert "no publisher with id" in err


async def test_conflicting_registration_refused(cli):
    owner, project = unique("org"), unique("pkg")
    await cli("project", "add", project)
    base = ["publisher", "add", "github", "--project", project, "--owner", owner, "--repository", "demo",
            "--workflow", "release.yml"]  # fmt: skip
    assert (await cli(*base, "--owner-id", "1001"))[0] == 0
    code, _, err = await cli(*base, "--owner-id", "2002")
    assert code == 2
    assert "owner id 1001, not 2002" in err


async def test_migrate_is_idempotent(cli):
    code, out, _ = await cli("migrate")
    assert (code, out) == (0, "the schema is up to date\n")
    code, out, _ = await cli("migrate", "--json")
    assert json.loads(out) == {"applied": []}


async def test_database_unavailable_exits_1(cli):
    url = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/trustpub"
    code, out, err = await cli("project", "list", "--database-url", url)
    assert code == 1
    assert out == ""
    # The warning about a password on the command line, then the error.
    assert err.count("\n") == 2
    assert err.startswith("trustpub: warning: a password on the command line")
    assert "is unavailable" in err.splitlines()[1]
    assert "secret" not in err
    assert "***" in err
