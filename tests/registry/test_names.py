"""Project names are ASCII (PEP 508), at every entry point: refused, never folded (issue 12,
item 3). The check names the offending character, escaped."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from tests.support.migrations import database_before
from tests.support.registry import unique

from trustpub.providers.rules import RegistrationError
from trustpub.registry import migrations
from trustpub.registry.pool import connect
from trustpub.registry.publishers import check_project_name, normalize_name


@pytest.mark.parametrize(
    ("name", "stored"),
    [("a", "a"), ("Z9", "Z9"), ("My.Pkg_x-1", "My.Pkg_x-1"), ("  padded\t", "padded"), ("a.b", "a.b")],
)
def test_valid_names(name, stored):
    assert check_project_name(name) == stored


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("req\u017fests", "U+017F (LATIN SMALL LETTER LONG S) at position 4 is not ASCII"),
        ("\u212aeras", "U+212A (KELVIN SIGN) at position 1 is not ASCII"),
        ("\uff4beras", "U+FF4B (FULLWIDTH LATIN SMALL LETTER K) at position 1 is not ASCII"),
        ("caf\u00e9", "U+00E9 (LATIN SMALL LETTER E WITH ACUTE) at position 4 is not ASCII"),
        ("\u0131nfo", "U+0131 (LATIN SMALL LETTER DOTLESS I) at position 1 is not ASCII"),
        ("nbsp\u00a0", "U+00A0 (NO-BREAK SPACE) at position 5 is not ASCII"),
        ("bad name!", "U+0020 (SPACE) at position 4 is not allowed"),
        ("two\nlines", "U+000A at position 4 is not allowed"),
        ("-pkg", "it must start and end with a letter or digit"),
        ("pkg.", "it must start and end with a letter or digit"),
        ("", "a project name is required"),
    ],
)
def test_invalid_names_name_the_character(name, why):
    with pytest.raises(RegistrationError) as info:
        check_project_name(name)
    assert why in str(info.value)
    assert str(info.value).isascii()
    # normalize_name checks too: a look-alike is never folded onto an ASCII name.
    with pytest.raises(RegistrationError):
        normalize_name(name)


def test_normalize_ascii():
    assert normalize_name("My.Pkg__x--1") == "my-pkg-x-1"


async def test_every_cli_entry_point_refuses(cli, conn):
    kelvin = f"\u212a{unique('eras')}"
    long_s = f"req\u017f{unique('ests')}"
    code, out, err = await cli("project", "add", long_s)
    assert (code, out) == (2, "")
    assert "U+017F (LATIN SMALL LETTER LONG S) at position 4 is not ASCII" in err
    code, _, err = await cli("project", "add", kelvin)
    assert code == 2
    assert "U+212A (KELVIN SIGN) at position 1 is not ASCII" in err
    # Nothing was stored under the folded name either.
    folded = kelvin.replace("\u212a", "k")
    assert await conn.fetchval("SELECT count(*) FROM projects WHERE normalized_name = $1", folded) == 0

    # An existing ASCII project cannot be reached through a look-alike.
    await cli("project", "add", folded)
    owner = unique("org")
    github = ["--owner", owner, "--owner-id", "1001", "--repository", "demo", "--workflow", "release.yml"]
    code, _, err = await cli("publisher", "add", "github", "--project", kelvin, *github)
    assert code == 2
    assert "U+212A (KELVIN SIGN) at position 1 is not ASCII" in err
    code, _, err = await cli(
        "publisher", "add", "github", "--pending-project", long_s, "--registrant", "mallory", *github
    )
    assert code == 2
    assert "U+017F" in err
    assert await conn.fetchval("SELECT count(*) FROM pending_publishers WHERE registrant = 'mallory'") == 0
    code, _, err = await cli("publisher", "list", "--project", kelvin)
    assert code == 2
    assert "U+212A" in err


async def test_migration_removes_pending_publishers_with_non_ascii_names(pg_admin_url):
    async with database_before(pg_admin_url, "0005_ascii_project_names") as url:
        conn = await asyncio.wait_for(connect(url), 10)
        try:
            rows = {}
            for name in ("req\u017fests", "\u212aeras", "fine-name"):
                rows[name] = await conn.fetchval(
                    "INSERT INTO pending_publishers (provider, issuer, lookup_key, unique_key, spec, "
                    "project_name, normalized_name, registrant, expires_at) "
                    "VALUES ('github', 'https://iss', 'o/r', $1, '{}', $2, lower($2), 'old', "
                    "now() + interval '1 day') RETURNING id",
                    uuid.uuid4().hex,
                    name,
                )
            applied = await asyncio.wait_for(migrations.apply(url), 30)
            assert applied[0] == "0005_ascii_project_names"
            left = await conn.fetch("SELECT project_name FROM pending_publishers")
            assert [r["project_name"] for r in left] == ["fine-name"]
            audited = await conn.fetch(
                "SELECT publisher_id, detail FROM audit_events WHERE kind = 'pending.removed'"
            )
            assert {r["publisher_id"] for r in audited} == {rows["req\u017fests"], rows["\u212aeras"]}
            assert all(r["detail"]["by"] == "migration 0005_ascii_project_names" for r in audited)
        finally:
            await conn.close()
