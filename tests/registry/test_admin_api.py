"""The admin API (issue 15): the gateway's admin listener in front of the registry over the bus
(sealed ``admin.call``), with real NATS and PostgreSQL. Every operation with each scope, tokens
expired, revoked, forged and reaching for another project, malformed bodies (422 naming the
fields, never a 5xx), the audit rows with the token's id and name, and the API's OpenAPI
document fuzzed live."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from structlog.testing import capture_logs
from tests.support.registry import register, registry_running, unique
from tests.support.services import running

from trustpub.gateway import app as gateway_app
from trustpub.gateway.config import Settings as GatewaySettings
from trustpub.registry import admintokens
from trustpub.registry.publishers import NotFound, add_project, normalize_name
from trustpub.runtime import Runtime, load

GITHUB = {
    "provider": "github",
    "owner": "octo-org",
    "owner_id": "1001",
    "repository": "demo",
    "workflow": "release.yml",
}


@dataclass
class Api:
    base: str
    session: aiohttp.ClientSession
    tokens: dict[str, str]
    ids: dict[str, str]

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = "admin",  # noqa: S107  (a scope's name, not a secret)
        body: Any = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.tokens.get(token, token)}"
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        async with self.session.request(method, self.base + path, data=data, headers=headers) as resp:
            assert resp.status < 500, (method, path, resp.status, await resp.text())
            assert resp.content_type == "application/json"
            return resp.status, await resp.json()


@contextlib.asynccontextmanager
async def admin_api(common: dict[str, str], database_url: str) -> AsyncIterator[tuple[Runtime, str]]:
    """The registry and a whole gateway with its admin listener on a free port."""
    env = {
        **common,
        "TRUSTPUB_MINTER_KEY_IDS": "a-minter-key-id",
        "TRUSTPUB_HTTP_PORT": "0",
        "TRUSTPUB_ADMIN_PORT": "0",
    }
    async with (
        registry_running(common, database_url) as registry,
        running(Runtime("gateway", load(GatewaySettings, env)), gateway_app.setup) as gateway,
    ):
        yield registry, f"http://127.0.0.1:{gateway.admin_port}/admin/v1"


@pytest.fixture
async def api(common: dict[str, str], database_url: str, conn: Any) -> AsyncIterator[Api]:
    mine, other = unique("mine"), unique("other")
    for name in (mine, other):
        await add_project(conn, name, created_by="test")
    tokens, ids = {}, {"mine": mine, "other": other}
    for scope, projects in (("admin", []), ("read", []), ("owner", [mine])):
        token, secret = await admintokens.create_token(
            conn, name=f"{scope}-{mine}", scope=scope, projects=projects, days=1, created_by="test"
        )
        tokens[scope], ids[scope] = secret, token.id
    async with admin_api(common, database_url) as (_, base), aiohttp.ClientSession() as session:
        yield Api(base, session, tokens, ids)


async def _audit(conn: Any, token_id: str, kind: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT kind, code, detail FROM audit_events "
        "WHERE kind = $1 AND detail->>'token_id' = $2 ORDER BY id",
        kind,
        token_id,
    )
    return [{"kind": r["kind"], "code": r["code"], **dict(r["detail"])} for r in rows]


# --- tokens --------------------------------------------------------------------------------------


async def test_a_token_is_stored_only_as_its_hash_and_listed_without_it(conn: Any) -> None:
    project = unique("tok")
    await add_project(conn, project)
    token, secret = await admintokens.create_token(conn, name="ci", scope="owner", projects=[project], days=7)
    assert secret.startswith(f"tpadm_{uuid.UUID(token.id).hex}_")
    row = await conn.fetchrow("SELECT * FROM admin_tokens WHERE id = $1", uuid.UUID(token.id))
    assert bytes(row["secret_hash"]) == hashlib.sha256(secret.encode()).digest()
    assert secret not in str(dict(row))
    listed = [t.to_json() for t in await admintokens.list_tokens(conn) if t.id == token.id]
    assert listed
    assert secret not in str(listed)
    assert listed[0]["projects"] == [normalize_name(project)]
    assert datetime.now(UTC) + timedelta(days=6) < token.expires_at <= datetime.now(UTC) + timedelta(days=7)


async def test_token_creation_refuses_what_it_cannot_grant(conn: Any) -> None:
    with pytest.raises(admintokens.RegistrationError, match="scope"):
        await admintokens.create_token(conn, name="x", scope="root", days=1)
    with pytest.raises(admintokens.RegistrationError, match="owner"):
        await admintokens.create_token(conn, name="x", scope="owner", days=1)
    with pytest.raises(admintokens.RegistrationError, match="owner"):
        await admintokens.create_token(conn, name="x", scope="admin", projects=["a"], days=1)
    with pytest.raises(admintokens.RegistrationError, match="days"):
        await admintokens.create_token(conn, name="x", scope="read", days=0)
    with pytest.raises(NotFound):
        await admintokens.create_token(conn, name="x", scope="owner", projects=[unique("nope")], days=1)


async def test_the_cli_creates_lists_and_revokes_tokens(cli: Any, conn: Any) -> None:
    code, out, err = await cli(
        "admin", "token", "create", "--name", "deploy", "--scope", "read", "--days", "2"
    )
    assert code == 0, err
    secret = out.strip().splitlines()[-1]
    tid = str(admintokens.token_id(secret))
    code, out, _ = await cli("admin", "token", "list")
    assert code == 0
    assert tid in out
    assert secret not in out
    code, out, _ = await cli("admin", "token", "revoke", tid)
    assert code == 0
    assert "revoked" in out
    with pytest.raises(admintokens.Refused, match="revoked"):
        await admintokens.authenticate(conn, secret)
    code, _, err = await cli("admin", "token", "create", "--name", "x", "--scope", "owner")
    assert code == 2
    assert "owner" in err


# --- every operation with every scope ----------------------------------------------------------------


async def test_every_operation_with_each_scope(api: Api, conn: Any) -> None:  # noqa: PLR0915
    mine, other = api.ids["mine"], api.ids["other"]
    p_mine = await register(conn, projects=[mine], owner=unique("om"))
    p_other = await register(conn, projects=[other], owner=unique("oo"))

    # Projects.
    for scope in ("admin", "read"):
        status, listed = await api.call("GET", "/projects", token=scope)
        assert status == 200
        assert {mine, other} <= {p["name"] for p in listed}
    status, listed = await api.call("GET", "/projects", token="owner")
    assert status == 200
    assert mine in {p["name"] for p in listed}
    assert other not in {p["name"] for p in listed}
    for scope, want in (("admin", 200), ("read", 200), ("owner", 200)):
        status, shown = await api.call("GET", f"/projects/{mine}", token=scope)
        assert status == want
        assert [p["id"] for p in shown["publishers"]] == [p_mine.id]
    assert (await api.call("GET", f"/projects/{other}", token="owner"))[0] == 403
    new = unique("new")
    for scope in ("read", "owner"):
        assert (await api.call("POST", "/projects", token=scope, body={"name": new}))[0] == 403
    status, created = await api.call("POST", "/projects", body={"name": new})
    assert status == 201
    assert created["name"] == new
    assert (await api.call("POST", "/projects", body={"name": new}))[0] == 422  # exists
    for scope in ("read", "owner"):
        assert (await api.call("DELETE", f"/projects/{new}", token=scope))[0] == 403
    assert (await api.call("DELETE", f"/projects/{mine}"))[0] == 409  # it has a publisher
    assert (await api.call("DELETE", f"/projects/{new}"))[0] == 200
    assert (await api.call("GET", f"/projects/{new}"))[0] == 404

    # Publishers.
    status, listed = await api.call("GET", "/publishers", token="owner")
    assert status == 200
    assert {p["id"] for p in listed} == {p_mine.id}
    for scope in ("admin", "read"):
        status, listed = await api.call("GET", "/publishers", token=scope)
        assert status == 200
        assert {p_mine.id, p_other.id} <= {p["id"] for p in listed}
    assert (await api.call("GET", f"/publishers?project={other}", token="owner"))[0] == 403
    assert (await api.call("GET", f"/publishers/{p_other.id}", token="owner"))[0] == 403
    assert (await api.call("GET", f"/publishers/{p_other.id}", token="read"))[0] == 200
    body = GITHUB | {"owner": unique("new"), "projects": [mine], "allowed_refs": ["refs/tags/v*"]}
    assert (await api.call("POST", "/publishers", token="read", body=body))[0] == 403
    assert (await api.call("POST", "/publishers", token="owner", body=body | {"projects": [other]}))[0] == 403
    assert (await api.call("POST", "/publishers", token="owner", body=body | {"projects": [mine, other]}))[
        0
    ] == 403
    status, made = await api.call("POST", "/publishers", token="owner", body=body)
    made_id = made["publisher"]["id"]
    assert status == 201
    assert made["created"]
    assert made["publisher"]["spec"]["allowed_refs"] == ["refs/tags/v*"]
    assert (await api.call("POST", "/publishers", token="owner", body=body))[0] == 200  # identical: linked
    assert (await api.call("DELETE", f"/publishers/{p_other.id}", token="owner"))[0] == 403
    assert (await api.call("DELETE", f"/publishers/{made['publisher']['id']}", token="read"))[0] == 403
    assert (await api.call("DELETE", f"/publishers/{made['publisher']['id']}", token="owner"))[0] == 200
    assert (await api.call("GET", f"/publishers/{made['publisher']['id']}"))[0] == 404

    # Pending publishers: admin only changes them.
    pending_body = GITHUB | {
        "owner": unique("pend"),
        "pending_project": unique("future"),
        "registrant": "alice",
    }
    for scope in ("read", "owner"):
        assert (await api.call("POST", "/publishers", token=scope, body=pending_body))[0] == 403
    status, made = await api.call("POST", "/publishers", body=pending_body)
    assert status == 201
    assert made["pending"]
    pid = made["publisher"]["id"]
    assert (await api.call("GET", f"/pending/{pid}", token="read"))[0] == 200
    assert (await api.call("GET", f"/pending/{pid}", token="owner"))[0] == 403
    assert pid in {p["id"] for p in (await api.call("GET", "/pending", token="read"))[1]}
    assert pid not in {p["id"] for p in (await api.call("GET", "/pending", token="owner"))[1]}
    assert (await api.call("DELETE", f"/pending/{pid}", token="owner"))[0] == 403
    assert (await api.call("DELETE", f"/pending/{pid}"))[0] == 200

    # The audit trail: admin and read, never an owner.
    assert (await api.call("GET", "/audit?limit=5", token="owner"))[0] == 403
    status, rows = await api.call("GET", "/audit?kind=admin.refused&limit=500", token="read")
    assert status == 200
    assert rows
    assert all(r["kind"] == "admin.refused" for r in rows)
    assert (await api.call("GET", "/audit?refused=true&limit=3"))[0] == 200

    # Mint revocation: admin, or the owner of every project of the mint.
    mints = {}
    for name, publisher, projects in (("mine", p_mine, [mine]), ("other", p_other, [other])):
        mints[name] = uuid.uuid4()
        await conn.execute(
            "INSERT INTO mints (id, publisher_id, issuer, token_key, projects, issued_at, expires_at) "
            "VALUES ($1, $2, 'https://token.actions.githubusercontent.com', $3, $4, now(), "
            "now() + interval '15 minutes')",
            mints[name],
            uuid.UUID(publisher.id),
            uuid.uuid4().hex,
            [normalize_name(p) for p in projects],
        )
    assert (await api.call("POST", f"/mints/{mints['other']}/revoke", token="owner"))[0] == 403
    assert (await api.call("POST", f"/mints/{mints['mine']}/revoke", token="read"))[0] == 403
    status, done = await api.call(
        "POST", f"/mints/{mints['mine']}/revoke", token="owner", body={"reason": "leaked"}
    )
    assert status == 200
    assert done["revoked_now"]
    status, done = await api.call("POST", f"/mints/{mints['other']}/revoke")
    assert status == 200
    assert done["revoked_now"]
    assert (await api.call("POST", f"/mints/{uuid.uuid4()}/revoke"))[0] == 404

    # Every change carries the token's id and name; so does every refusal.
    owner_calls = await _audit(conn, api.ids["owner"], "admin.call")
    assert {(c["method"], c["status"]) for c in owner_calls} >= {
        ("POST", 201),
        ("DELETE", 200),
        ("POST", 200),
    }
    assert all(c["token_name"] == f"owner-{mine}" for c in owner_calls)
    refusals = await _audit(conn, api.ids["owner"], "admin.refused")
    assert len(refusals) >= 10
    assert {r["code"] for r in refusals} == {"forbidden"}
    removed_by = await conn.fetchval(
        "SELECT detail->>'by' FROM audit_events WHERE kind = 'publisher.removed' AND publisher_id = $1",
        uuid.UUID(made_id),
    )
    assert removed_by == f"token:owner-{mine} ({api.ids['owner']})"
    revoked_by = await conn.fetchval(
        "SELECT detail->>'by' FROM audit_events WHERE kind = 'mint.revoked' AND mint_id = $1", mints["mine"]
    )
    assert revoked_by == f"token:owner-{mine} ({api.ids['owner']})"


async def test_tokens_expired_revoked_forged_or_missing_are_refused(api: Api, conn: Any) -> None:
    admin_id = api.ids["admin"]
    assert (await api.call("GET", "/projects"))[0] == 200
    for token in (
        None,
        "",
        "tpadm_",
        api.tokens["admin"][:-1] + "x",
        "tpadm_" + "0" * 32 + "_nope",
        "Basic abc",
    ):
        status, body = await api.call("GET", "/projects", token=token)
        assert status == 401, token
        assert body["code"] == "unauthenticated", token
    async with api.session.get(
        api.base + "/projects", headers={"Authorization": "Basic " + api.tokens["admin"]}
    ) as resp:
        assert resp.status == 401
    await conn.execute(
        "UPDATE admin_tokens SET expires_at = now() - interval '1 second' WHERE id = $1", uuid.UUID(admin_id)
    )
    status, body = await api.call("GET", "/projects")
    assert status == 401
    assert "expired" in body["message"]
    await conn.execute(
        "UPDATE admin_tokens SET expires_at = now() + interval '1 day' WHERE id = $1", uuid.UUID(admin_id)
    )
    await admintokens.revoke_token(conn, admin_id, actor="test")
    status, body = await api.call("POST", "/projects", body={"name": unique("late")})
    assert status == 401
    assert "revoked" in body["message"]
    refused = await _audit(conn, admin_id, "admin.refused")
    assert {r["code"] for r in refused} == {"unauthenticated"}
    assert len(refused) >= 3
    # A refusal never echoes the token.
    assert all(api.tokens["admin"] not in str(r) for r in refused)


# --- malformed input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (b"{", {"body"}),
        (b"[]", {"body"}),
        (b'"text"', {"body"}),
        (b'{"provider": "bitbucket"}', {"provider"}),
        (b'{"provider": "github"}', {"owner", "repository", "workflow"}),
        (
            b'{"provider": "github", "owner": 5, "repository": [], "workflow": "w.yml", "projects": "p"}',
            {"owner", "repository", "projects"},
        ),
        (
            b'{"provider": "github", "owner": "o", "repository": "r", "workflow": "w.yml", "colour": "red"}',
            {"colour"},
        ),
        (b'{"provider": "google", "email": "a@b.c", "token_lifetime": "long"}', {"token_lifetime"}),
        (
            (
                b'{"provider": "gitlab", "project_path": "a/b", "ci_config_path": "x.yml", '
                b'"pin_on_first_use": "yes"}'
            ),
            {"pin_on_first_use"},
        ),
        (b'{"provider": "github", "owner": "o", "repository": "r", "workflow": "w.yml"}', {"projects"}),
        (
            (
                b'{"provider": "github", "owner": "o", "repository": "r", "workflow": "w.yml", '
                b'"projects": ["a"], "pending_project": "b"}'
            ),
            {"pending_project"},
        ),
    ],
)
async def test_malformed_bodies_are_422_naming_the_fields(api: Api, body: bytes, fields: set[str]) -> None:
    status, answer = await api.call("POST", "/publishers", raw=body)
    assert status == 422, answer
    assert {e["field"] for e in answer["errors"]} == fields


async def test_the_clis_validation_applies_with_its_message(api: Api) -> None:
    body = GITHUB | {"projects": [api.ids["mine"]]}
    cases = [
        (body | {"owner_id": None}, "owner"),  # neither the owner's id nor --pin-on-first-use
        (body | {"environment": "PRODÜCTION"}, "environment"),
        (body | {"workflow": "../x.yml"}, "workflow"),
        (body | {"issuer": "http://insecure"}, "https"),
        (body | {"projects": ["not a name!"]}, "project name"),
        (body | {"token_lifetime": 1}, "lifetime"),
        (GITHUB | {"projects": [unique("absent")]}, "does not exist"),
    ]
    for case, words in cases:
        status, answer = await api.call("POST", "/publishers", body=case)
        assert status in {404, 422}, (case, answer)
        assert words in answer["message"].lower(), (case, answer)
    for raw in (b"\xff\xfe", b"[" * 5000 + b"]" * 5000, b"{}" * 40000):
        status, _ = await api.call("POST", "/projects", raw=raw)
        assert status in {413, 422}
    status, answer = await api.call("POST", "/projects", body={"name": 3, "x": 1})
    assert status == 422
    assert {e["field"] for e in answer["errors"]} == {"name", "x"}
    status, answer = await api.call("GET", "/audit?limit=0&since=yesterday&colour=red")
    assert status == 422
    assert {e["field"] for e in answer["errors"]} == {"limit", "since", "colour"}
    status, answer = await api.call("GET", "/publishers?colour=red&project=x")
    assert status == 422
    assert {e["field"] for e in answer["errors"]} == {"colour"}
    assert (await api.call("GET", "/publishers/not-a-uuid"))[0] == 404
    assert (await api.call("PUT", "/projects"))[0] == 405
    assert (await api.call("GET", "/nothing/here"))[0] == 404


async def test_nul_characters_are_refused_never_a_503(api: Api, conn: Any) -> None:
    """PostgreSQL's text and jsonb hold no U+0000: anywhere in a call it is a 422 naming where,
    not a failed statement (found by the live fuzz: an audit filter carrying one was a 503)."""
    mint_id = uuid.uuid4()
    for method, path in (
        ("GET", "/audit?kind=%00"),
        ("GET", "/audit?exchange_id=a%00b&code=x"),
        ("GET", "/publishers?project=%00"),
        ("GET", "/projects/a%00b"),
        ("DELETE", "/pending/%00"),
    ):
        status, answer = await api.call(method, path)
        assert status == 422, (path, answer)
        assert "U+0000" in answer["message"], answer
    for path, body in (
        ("/projects", {"name": "a\u0000b"}),
        (f"/mints/{mint_id}/revoke", {"reason": "\u0000"}),
        ("/publishers", GITHUB | {"projects": [api.ids["mine"]], "registrant": "x\u0000"}),
        ("/apply", {"file": "", "plan": ["\u0000"]}),
    ):
        status, answer = await api.call("POST", path, body=body)
        assert status == 422, (path, answer)
        assert {e["field"] for e in answer["errors"]} == {"body"}, answer
    # Refused and audited like any other refusal; the audit row holds the path escaped.
    rows = await _audit(conn, api.ids["admin"], "admin.refused")
    assert any(r["path"] == "/projects/a\\u0000b" for r in rows), rows


async def test_an_admin_calls_log_lines_carry_one_id_through_the_bus(api: Api) -> None:
    """The admin site gives each call an id, bound to its log lines and sent with the call, so
    the registry's lines for it carry that id too."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        status, _ = await api.call("GET", "/projects", token="tpadm_forged")
    assert status == 401
    [refused] = [e for e in logs if e["event"] == "admin_refused"]
    assert re.fullmatch(r"[0-9a-f]{32}", refused["exchange_id"]), refused


async def test_a_missing_owner_id_names_its_field(api: Api) -> None:
    body = GITHUB | {"projects": [api.ids["mine"]], "owner_id": None}
    status, answer = await api.call("POST", "/publishers", body=body)
    assert status == 422
    assert [e["field"] for e in answer["errors"]] == ["owner_id"]


def _json_of(out: str) -> Any:
    """The CLI's JSON answer in captured stdout (the in-process services' log lines go there too)."""
    start = min(i for i in (out.find("{\n"), out.find("[\n"), out.find("[]")) if i >= 0)
    return json.JSONDecoder().raw_decode(out[start:])[0]


async def test_the_cli_talks_to_the_api_with_a_token(
    api: Api, cli: Any, conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRUSTPUB_API_URL", api.base.removesuffix("/admin/v1"))
    monkeypatch.setenv("TRUSTPUB_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")  # never used
    monkeypatch.delenv("TRUSTPUB_API_TOKEN", raising=False)
    code, _, err = await cli("project", "list")
    assert code == 2
    assert "TRUSTPUB_API_TOKEN" in err
    monkeypatch.setenv("TRUSTPUB_API_TOKEN", api.tokens["owner"])
    code, out, err = await cli("project", "list")
    assert code == 0, err
    assert [p["name"] for p in _json_of(out)] == [api.ids["mine"]]
    owner = unique("cli")
    args = ["--project", api.ids["mine"], "--owner", owner, "--owner-id", "5", "--repository", "r"]
    code, out, err = await cli(
        "publisher", "add", "github", *args, "--workflow", "w.yml", "--allow-ref", "refs/tags/*"
    )
    assert code == 0, err
    made = _json_of(out)["publisher"]
    assert made["spec"]["allowed_refs"] == ["refs/tags/*"]
    code, _, err = await cli(
        "publisher", "add", "github", *args, "--workflow", "w.yml", "--environment", " x"
    )
    assert code == 2
    assert "environment" in err
    code, _, err = await cli("project", "add", unique("nope"))
    assert code == 2
    assert "HTTP 403" in err
    code, _, err = await cli("audit", "list")
    assert code == 2
    assert "HTTP 403" in err
    code, out, err = await cli("publisher", "remove", made["id"])
    assert code == 0, err
    assert _json_of(out)["removed"]["id"] == made["id"]
    assert await conn.fetchval("SELECT count(*) FROM publishers WHERE id = $1", uuid.UUID(made["id"])) == 0
    monkeypatch.setenv("TRUSTPUB_API_TOKEN", api.tokens["read"])
    code, out, err = await cli("audit", "list", "--kind", "admin.call", "--limit", "5")
    assert code == 0, err
    assert all(r["kind"] == "admin.call" for r in _json_of(out))


async def test_apply_and_export_over_the_api(
    api: Api, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = api.ids["mine"]
    status, exported = await api.call("GET", "/export", token="read")
    assert status == 200
    assert f'name = "{mine}"' in exported["file"]
    assert (await api.call("GET", "/export", token="owner"))[0] == 403
    owner = unique("code")
    text = f"""[[project]]\nname = "{mine}"\n\n[[publisher]]\nprovider = "github"\nprojects = ["{mine}"]
owner = "{owner}"\nowner_id = "7"\nrepository = "r"\nworkflow = "w.yml"\n"""
    for scope in ("read", "owner"):
        assert (await api.call("POST", "/apply", token=scope, body={"file": text}))[0] == 403
    status, planned = await api.call("POST", "/apply", body={"file": text, "dry_run": True})
    assert status == 200
    assert planned == {"plan": ["create github publisher (line 4) for " + mine], "applied": 0}
    stale = {"file": text, "plan": ["something else"]}
    assert (await api.call("POST", "/apply", body=stale))[0] == 409
    status, done = await api.call("POST", "/apply", body={"file": text, "plan": planned["plan"]})
    assert status == 200
    assert done["applied"] == 1
    status, again = await api.call("POST", "/apply", body={"file": text, "dry_run": True})
    assert again["plan"] == []
    status, answer = await api.call("POST", "/apply", body={"file": text.replace('"w.yml"', '"../w.yml"')})
    assert status == 422
    assert answer["errors"][0]["field"] == "file"
    assert "line 4:" in answer["errors"][0]["message"]
    status, answer = await api.call("POST", "/apply", body={"file": 1, "dry_run": "yes", "prune": None})
    assert status == 422
    assert {e["field"] for e in answer["errors"]} == {"file", "dry_run", "prune"}
    # The CLI does the same over the API.
    monkeypatch.setenv("TRUSTPUB_API_URL", api.base.removesuffix("/admin/v1"))
    monkeypatch.setenv("TRUSTPUB_API_TOKEN", api.tokens["admin"])
    path = tmp_path / "publishers.toml"
    path.write_text(text.replace('"w.yml"', '"v.yml"'))
    code, out, err = await cli("apply", "-f", str(path), "--dry-run")
    assert code == 0, err
    assert f"  create github publisher (line 4) for {mine}\n" in out
    code, out, err = await cli("apply", "-f", str(path))
    assert code == 0, err
    assert "applied 1 change(s)" in out
    code, out, err = await cli("export")
    assert code == 0, err
    assert 'workflow = "v.yml"' in out


async def test_the_openapi_document_is_served_on_the_admin_port_only(api: Api) -> None:
    async with api.session.get(api.base + "/openapi.json") as resp:
        doc = await resp.json()
    assert resp.status == 200
    assert doc["info"]["title"] == "trustpub admin API"
    assert "/admin/v1/publishers" in doc["paths"]


# --- the OpenAPI document, fuzzed live --------------------------------------------------------------

FUZZ_EXAMPLES = 60


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
async def test_answers_conform_to_the_openapi_document(api: Api, mode: str) -> None:
    import schemathesis  # noqa: PLC0415  (only the fuzz needs it)
    from hypothesis import HealthCheck, given, settings  # noqa: PLC0415
    from schemathesis import GenerationMode  # noqa: PLC0415
    from tests.support.fuzz import CHECKS  # noqa: PLC0415

    auth = {"Authorization": f"Bearer {api.tokens['admin']}"}
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE

    def fuzz() -> set[str]:
        # Synchronous HTTP: in a thread, while the services answer on this test's loop.
        schema = schemathesis.openapi.from_url(api.base + "/openapi.json", timeout=10)
        seen: set[str] = set()

        @given(case=schema.as_strategy(generation_mode=generation))
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def call(case: Any) -> None:
            seen.add(f"{case.method.upper()} {case.path}")
            case.call_and_validate(checks=CHECKS, headers=auth, timeout=10)

        call()
        return seen

    seen = await asyncio.to_thread(fuzz)
    assert len(seen) >= 5, seen
