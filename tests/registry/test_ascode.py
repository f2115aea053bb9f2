"""Publishers as code (issue 15, item 3): ``trustpub apply -f FILE`` and ``trustpub export``
on a database of their own (``--prune`` removes what the file does not list)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tests.support.services import create_database

from trustpub.registry import ascode
from trustpub.registry.pool import connect
from trustpub.registry.publishers import list_projects, list_publishers

ACTOR_ID = "9a4b7e5c-1b2c-4d3e-8f9a-0b1c2d3e4f5a"
FILE = """\
[[project]]
name = "alpha"

[[project]]
name = "Beta.Pkg"

[[publisher]]
provider = "github"
projects = ["alpha", "Beta.Pkg"]
owner = "octo-org"
owner_id = "1001"
repository = "demo"
workflow = "release.yml"
environment = "release"
allowed_refs = ["refs/tags/v*"]

[[publisher]]
provider = "github"
projects = ["alpha"]
owner = "octo-org"
repository = "other"
workflow = "ci.yml"
pin_on_first_use = true

[[publisher]]
provider = "gitlab"
projects = ["Beta.Pkg"]
project_path = "group/sub/proj"
namespace_id = "77"
ci_config_path = ".gitlab-ci.yml"

[[publisher]]
provider = "google"
projects = ["alpha"]
email = "deploy@proj.iam.gserviceaccount.com"
sub = "1234567890"
token_lifetime = 600

[[publisher]]
provider = "activestate"
projects = ["alpha"]
organization = "orgname"
activestate_project = "projname"
actor_id = "9a4b7e5c-1b2c-4d3e-8f9a-0b1c2d3e4f5a"
"""


@pytest.fixture
async def own_db(pg_admin_url: str) -> str:
    """A database of this test's own: apply --prune makes all of it match the file."""
    return await create_database(pg_admin_url)


@pytest.fixture
def database_url(own_db: str) -> str:
    """The shared ``conn`` and ``cli`` (conftest.py) use this test's own database."""
    return own_db


@pytest.fixture
def trustpub(cli: Any) -> Any:
    """``trustpub ARGS`` on this test's own database -> (code, out, err)."""
    return cli


async def _state(conn: Any) -> tuple[list[str], list[tuple[str, Any, list[str]]]]:
    projects = [p.name for p in await list_projects(conn)]
    publishers = sorted(
        (p.unique_key, sorted(p.spec.items()), sorted(p.projects)) for p in await list_publishers(conn)
    )
    return projects, publishers  # type: ignore[return-value]


async def test_apply_prints_the_plan_then_makes_the_database_match(
    trustpub: Any, conn: Any, tmp_path: Path
) -> None:
    path = tmp_path / "publishers.toml"
    path.write_text(FILE)
    code, out, err = await trustpub("apply", "-f", str(path), "--dry-run")
    assert code == 0, err
    assert out.count("create project") == 2
    assert out.count("  create github") == 2
    assert await list_projects(conn) == []  # a dry run changes nothing
    code, out, err = await trustpub("apply", "-f", str(path))
    assert code == 0, err
    assert "applied 7 change(s)" in out
    publishers = await list_publishers(conn)
    assert len(publishers) == 5
    gh = next(p for p in publishers if p.spec.get("repository") == "demo")
    assert gh.projects == ["alpha", "Beta.Pkg"]
    assert gh.spec["allowed_refs"] == ["refs/tags/v*"]
    assert next(p for p in publishers if p.spec.get("repository") == "other").needs_confirmation
    code, out, _ = await trustpub("apply", "-f", str(path))
    assert code == 0
    assert "nothing to change" in out

    # Options changed, a project unlinked, a publisher left out: changed, unlinked, kept (no --prune).
    changed = FILE.replace('allowed_refs = ["refs/tags/v*"]', 'allowed_refs = ["refs/tags/v2*"]')
    changed = changed.replace('projects = ["alpha", "Beta.Pkg"]', 'projects = ["alpha"]')
    changed = changed[: changed.index('[[publisher]]\nprovider = "activestate"')]
    path.write_text(changed)
    code, out, err = await trustpub("apply", "-f", str(path))
    assert code == 0, err
    assert "change github publisher (line 7)" in out
    assert "refs/tags/v2*" in out
    assert "unlink github publisher (line 7)" in out
    assert "remove" not in out
    assert len(await list_publishers(conn)) == 5
    code, out, err = await trustpub("apply", "-f", str(path), "--prune")
    assert code == 0, err
    assert "remove activestate publisher" in out
    assert {p.provider for p in await list_publishers(conn)} == {"github", "gitlab", "google"}
    kinds = {r["kind"] for r in await conn.fetch("SELECT kind FROM audit_events")}
    assert {"project.created", "publisher.created", "publisher.changed", "publisher.unlinked"} <= kinds
    assert "publisher.removed" in kinds


async def test_export_then_apply_plans_nothing(trustpub: Any, conn: Any, tmp_path: Path) -> None:
    path = tmp_path / "publishers.toml"
    path.write_text(FILE)
    assert (await trustpub("apply", "-f", str(path)))[0] == 0
    # A pinned repository id (as a first token pins it) is exported and kept.
    await conn.execute(
        "UPDATE publishers SET spec = spec || $1 WHERE spec->>'repository' = 'demo'",
        {"repository_id": "2002"},
    )
    code, exported, err = await trustpub("export")
    assert code == 0, err
    assert 'repository_id = "2002"' in exported
    again = tmp_path / "exported.toml"
    again.write_text(exported)
    code, out, err = await trustpub("apply", "-f", str(again), "--dry-run", "--prune")
    assert code == 0, err
    assert out.strip() == "nothing to change"
    # The hand-written file leaves the pinned id out: kept, so nothing to change either.
    code, out, _ = await trustpub("apply", "-f", str(path), "--dry-run")
    assert out.strip() == "nothing to change"
    # Naming another id than the pinned one is an error, with the line.
    path.write_text(FILE.replace('repository = "demo"', 'repository = "demo"\nrepository_id = "9"'))
    code, _, err = await trustpub("apply", "-f", str(path))
    assert code == 2
    assert "line 7:" in err
    assert "pinned" in err


async def test_a_file_with_errors_names_each_line_and_changes_nothing(
    trustpub: Any, conn: Any, tmp_path: Path
) -> None:
    bad = (
        FILE.replace('name = "Beta.Pkg"', 'name = "Beta Pkg"')  # line 5
        .replace('workflow = "ci.yml"\n', "")  # the second publisher (line 17) misses its workflow
        .replace('namespace_id = "77"', 'namespace_id = "77"\ncolour = "red"')  # line 29
        .replace('projects = ["alpha"]\nemail', 'projects = ["gamma"]\nemail')  # line 34
    )
    path = tmp_path / "publishers.toml"
    path.write_text(bad)
    code, out, err = await trustpub("apply", "-f", str(path))
    assert code == 2
    assert out == ""
    for expected in (
        "line 5:",
        "line 17: workflow is required",
        "line 29: colour",
        'line 34: project "gamma"',
    ):
        assert expected in err, err
    assert "nothing was changed" in err
    assert await _state(conn) == ([], [])
    path.write_text("[[publisher]\nprovider = 1\n")
    code, _, err = await trustpub("apply", "-f", str(path))
    assert code == 2
    assert "line 1" in err
    path.write_text(FILE.replace('owner_id = "1001"', 'owner_id = "10x"'))
    code, _, err = await trustpub("apply", "-f", str(path))
    assert code == 2
    assert "line 7:" in err
    assert "numeric id" in err


async def test_concurrent_conflicting_applies_one_wins_the_other_changes_nothing(
    own_db: str, conn: Any
) -> None:
    first = ascode.parse(FILE, registrant="a")
    second = ascode.parse(FILE.replace('"refs/tags/v*"', '"refs/heads/main"'), registrant="b")
    connections = [await connect(own_db) for _ in range(2)]
    try:
        plans = [
            await ascode.plan(c, d, prune=True) for c, d in zip(connections, (first, second), strict=True)
        ]
        results = await asyncio.gather(
            *(
                ascode.apply(c, d, p, prune=True, actor=f"apply:{n}")
                for n, (c, d, p) in enumerate(zip(connections, (first, second), plans, strict=True))
            ),
            return_exceptions=True,
        )
    finally:
        for c in connections:
            await c.close()
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "int"], results
    winner = 0 if isinstance(results[0], int) else 1
    refs = await conn.fetchval(
        "SELECT spec->'allowed_refs' FROM publishers WHERE spec->>'repository' = 'demo'"
    )
    assert refs == (["refs/tags/v*"] if winner == 0 else ["refs/heads/main"])
    # Another apply holding the lock: refused at once, nothing changed.
    before = await _state(conn)
    holder = await connect(own_db)
    try:
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", ascode._LOCK)
            loser = first if winner == 1 else second
            shown = await ascode.plan(conn, loser, prune=True)
            assert not shown.empty
            with pytest.raises(ascode.Conflict, match="another apply"):
                await ascode.apply(conn, loser, shown, prune=True, actor="apply:late")
    finally:
        await holder.close()
    assert await _state(conn) == before
