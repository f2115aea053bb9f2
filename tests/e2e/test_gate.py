"""The upload gate in front of a real index (pypiserver), with real clients.

uv (``--trusted-publishing always``, exactly as in a GitHub Actions job), twine (with a token
obtained through the ``id`` library, as pypa/gh-action-pypi-publish does) upload through the
gate into pypiserver; every refusal leaves nothing in the index and is audited; a 100 MB upload
passes with the gate's memory bounded; the index down is a 503 with nothing recorded; concurrent
uploads all land with their records; provenance is signed and verifies offline.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest
from deploy.devstack.index import DevCertificate, PypiServer
from deploy.devstack.servers import free_port
from tests.support.e2e import Publisher, mint
from tests.support.gate import (
    TWINE,
    UV,
    GateUnderTest,
    audit_rows,
    basic,
    form,
    metadata,
    post,
    random_chunks,
    records,
    start_gate,
    stored,
    wheel,
)
from tests.support.waiting import until

from trustpub.messages import provenance, uploadtoken
from trustpub.messages.text import b64, unb64
from trustpub.minter import keys as minter_keys
from trustpub.minter.tokens import Signer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def index(tmp_path_factory) -> Iterator[PypiServer]:
    server = PypiServer(tmp_path_factory.mktemp("index")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def upload_tls(tmp_path_factory) -> DevCertificate:
    return DevCertificate(tmp_path_factory.mktemp("upload-tls")).ensure()


@pytest.fixture(scope="session")
def gate(stack, index, upload_tls) -> GateUnderTest:
    # Room for the 100 MB upload; the default (100 MiB) would do too, this says it.
    return start_gate(stack, index, upload_tls, "", TRUSTPUB_MAX_UPLOAD_BYTES=str(120 * 10**6))


@pytest.fixture(scope="session")
def small_gate(stack, index, upload_tls) -> GateUnderTest:
    """A gate with a 1 MiB limit, for the uploads over it."""
    return start_gate(stack, index, upload_tls, "-small", TRUSTPUB_MAX_UPLOAD_BYTES=str(1 << 20))


async def upload_token(http, stack, publisher: Publisher) -> str:
    status, body, _ = await mint(http, stack, publisher.token())
    assert status == 200, body
    return str(body["token"])


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(unb64(payload))


async def jwks(gate: GateUnderTest) -> dict[str, uploadtoken.PublicKey]:
    connector = aiohttp.TCPConnector(ssl=gate.client_tls())
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get(f"{gate.url}/_/oidc/jwks") as resp,
    ):
        assert resp.status == 200
        document = await resp.json()
    return {k["kid"]: uploadtoken.public_key(k) for k in document["keys"]}


async def statement(gate: GateUnderTest, project: str, filename: str) -> tuple[int, str]:
    connector = aiohttp.TCPConnector(ssl=gate.client_tls())
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get(f"{gate.url}/_/provenance/{project}/{filename}") as resp,
    ):
        return resp.status, await resp.text()


def client_env(gate: GateUnderTest, issuer) -> dict[str, str]:
    """A GitHub Actions job's environment, trusting the upload host's development CA."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("UV_", "GITHUB_", "ACTIONS_", "TWINE_"))},
        "SSL_CERT_FILE": str(gate.tls.ca),
        "REQUESTS_CA_BUNDLE": str(gate.tls.ca),
        "GITHUB_ACTIONS": "true",
        "ACTIONS_ID_TOKEN_REQUEST_URL": f"{issuer.base_url}/token",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": issuer.request_token,
        "UV_NO_CONFIG": "1",
    }


async def run(*argv: str, env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out = (await asyncio.wait_for(proc.communicate(), timeout))[0].decode(errors="replace")
    return int(proc.returncode or 0), out


# --- real clients ---------------------------------------------------------------------------------


async def test_uv_publishes_through_the_gate_and_the_file_has_verifiable_provenance(
    stack, gate, publisher, e2e_issuer, stack_env, tmp_path
):
    assert UV is not None, "uv is part of the test extra (make install)"
    path = wheel(tmp_path, publisher.project)
    e2e_issuer.profile = {"owner": publisher.owner, "repo": "demo", "owner_id": "1001"}
    try:
        code, output = await run(
            UV,
            "publish",
            "--publish-url",
            gate.upload_url,
            "--trusted-publishing",
            "always",
            str(path),
            env=client_env(gate, e2e_issuer),
        )
    finally:
        e2e_issuer.profile = {}
    assert code == 0, output
    assert stored(gate.index, publisher.project) == [path.name]
    (record,) = await records(stack_env["TRUSTPUB_DATABASE_URL"], publisher.project)
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["size"] == path.stat().st_size
    assert record["provenance"]["repository"] == f"{publisher.owner}/demo"
    assert record["provenance"]["workflow"] == "release.yml"
    # Audited in the record's transaction.
    (audit,) = await audit_rows(stack_env["TRUSTPUB_DATABASE_URL"], "upload.accepted", str(record["mint_id"]))
    assert audit["outcome"] == "accepted"
    # The statement: signed by a key of /_/oidc/jwks, naming this very file and its source.
    status, jws = await statement(gate, publisher.project, path.name)
    assert status == 200, jws
    claims = provenance.verify(jws, keys=await jwks(gate), issuer="trustpub")
    assert claims["upload"]["sha256"] == record["sha256"]
    assert claims["upload"]["filename"] == path.name
    assert claims["provenance"]["repository"] == f"{publisher.owner}/demo"
    for field in ("sha", "ref", "run_id"):
        assert claims["provenance"][field], field
    # The command line does the same from the file alone.
    code, output = await run(
        str(Path(os.sys.executable).parent / "trustpub"),
        "provenance",
        "verify",
        str(path),
        "--url",
        gate.url,
        "--ca",
        str(gate.tls.ca),
        env=dict(os.environ),
    )
    assert code == 0, output
    assert f"{publisher.owner}/demo" in output
    assert "verified" in output


async def test_twine_uploads_with_a_token_the_id_library_obtained(
    stack, gate, publisher, e2e_issuer, stack_env, tmp_path, monkeypatch
):
    """What pypa/gh-action-pypi-publish does: `id` gets the OIDC token for the audience the
    upload host names, the host's mint-token exchanges it, twine uploads with the result."""
    assert TWINE is not None, "twine is part of the test extra (make install)"
    import id as oidc_id  # noqa: PLC0415

    env = client_env(gate, e2e_issuer)
    for key in ("GITHUB_ACTIONS", "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN"):
        monkeypatch.setenv(key, env[key])
    e2e_issuer.profile = {"owner": publisher.owner, "repo": "demo", "owner_id": "1001"}
    connector = aiohttp.TCPConnector(ssl=gate.client_tls())
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.get(f"{gate.url}/_/oidc/audience") as resp:
                audience = (await resp.json())["audience"]
            oidc_token = await asyncio.to_thread(oidc_id.detect_credential, audience)
            async with http.post(f"{gate.url}/_/oidc/mint-token", json={"token": oidc_token}) as resp:
                assert resp.status == 200, await resp.text()
                token = (await resp.json())["token"]
    finally:
        e2e_issuer.profile = {}
    path = wheel(tmp_path, publisher.project, "0.1.0")
    code, output = await run(
        TWINE,
        "upload",
        "--non-interactive",
        "--disable-progress-bar",
        "--repository-url",
        gate.upload_url,
        "--username",
        "__token__",
        "--password",
        token,
        "--cert",
        str(gate.tls.ca),
        str(path),
        env=env,
    )
    assert code == 0, output
    assert stored(gate.index, publisher.project) == [path.name]
    (record,) = await records(stack_env["TRUSTPUB_DATABASE_URL"], publisher.project)
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # twine shows the gate's refusal as PyPI's: the status line carries the reason.
    other = wheel(tmp_path, f"{publisher.project}-other", "0.1.0")
    code, output = await run(
        TWINE,
        "upload",
        "--non-interactive",
        "--disable-progress-bar",
        "--repository-url",
        gate.upload_url,
        "-u",
        "__token__",
        "-p",
        token,
        "--cert",
        str(gate.tls.ca),
        str(other),
        env=env,
    )
    assert code != 0
    assert "403" in output
    assert "not allowed to upload to project" in output, output


# --- refusals: nothing reaches the index ---------------------------------------------------------


async def test_refusals_leave_nothing_in_the_index_and_are_audited(
    http, stack, gate, publisher, stack_env, tmp_path
):
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    token = await upload_token(http, stack, publisher)
    mint_id = claims_of(token)["jti"]
    good = wheel(tmp_path, publisher.project)
    fields = metadata(publisher.project, "0.0.1")

    # A file for another project than the token's: 403, with PyPI's kind of message.
    other = wheel(tmp_path, "someone-elses")
    status, reason, text = await post(
        gate, token, form(metadata("someone-elses", "0.0.1"), other.name, other.read_bytes())
    )
    assert status == 403, text
    assert "not allowed to upload to project 'someone-elses'" in reason
    # A file name that does not agree with the distribution's name: 400.
    status, _, text = await post(gate, token, form(fields, other.name, other.read_bytes()))
    assert status == 400, text
    assert "is not a file of" in text
    # Not a form at all; a form without a file: 400.
    status, _, _ = await post(gate, token, b"just bytes")
    assert status == 400
    status, _, _ = await post(gate, token, aiohttp.FormData(fields))
    assert status == 400
    # No token, another user name: 401.
    status, _, _ = await post(gate, "", form(fields, good.name, good.read_bytes()))
    assert status == 401
    status, _, _ = await post(gate, token, form(fields, good.name, good.read_bytes()), user="alice")
    assert status == 401
    assert stored(gate.index, publisher.project) == []
    assert stored(gate.index, "someone-elses") == []
    assert await records(db, publisher.project) == []
    # Each refusal with the token's mint id is audited, as a refused exchange is.
    audited = await until(
        lambda: _at_least(audit_rows(db, "upload.refused", mint_id), 4), "the refusals' audit rows"
    )
    assert {row["code"] for row in audited} >= {"forbidden", "invalid-upload"}
    # The same token still uploads what it may.
    status, _, text = await post(gate, token, form(fields, good.name, good.read_bytes()))
    assert status == 200, text
    assert stored(gate.index, publisher.project) == [good.name]


async def _at_least(rows, n):
    found = await rows
    return found if len(found) >= n else None


async def test_expired_burned_foreign_and_forged_tokens_are_refused_with_401(
    http, stack, gate, publisher, stack_env, tmp_path
):
    good = wheel(tmp_path, publisher.project)
    fields = metadata(publisher.project, "0.0.1")

    def upload(token: str):
        return post(gate, token, form(fields, good.name, good.read_bytes()))

    token = await upload_token(http, stack, publisher)
    claims = claims_of(token)
    key_file = Path(stack.service_env()["TRUSTPUB_MINTER_KEY_FILE"])
    ours = Signer(
        minter_keys.load("", key_file), prefix="trustpub-", issuer="trustpub", audience="trustpub-index"
    )

    def signed(signer: Signer, **changes) -> str:
        from trustpub.messages.v1 import MintGrant  # noqa: PLC0415

        fields_ = {**claims, **changes}
        return signer.mint(
            MintGrant(
                mint_id=fields_["jti"],
                publisher_id=fields_["sub"],
                projects=fields_["projects"],
                issued_at=fields_["iat"],
                expires_at=fields_["exp"],
                provenance=fields_["provenance"],
            )
        )

    # Expired: the deployment's own key, the record's own id, an expiry in the past.
    expired = signed(ours, exp=int(time.time()) - 5, iat=int(time.time()) - 60)
    # Another deployment: a key this gate does not pin, the same claims.
    foreign = signed(
        Signer(
            minter_keys.parse(uploadtoken.generate_signing_key()),
            prefix="trustpub-",
            issuer="trustpub",
            audience="trustpub-index",
        )
    )
    # Forged: the real token with its projects widened, the signature kept.
    head, _, sig = token.removeprefix("trustpub-").split(".")
    widened = {**claims, "projects": [*claims["projects"], "someone-elses"]}
    forged = "trustpub-" + ".".join([head, b64(json.dumps(widened).encode()).decode(), sig])
    for bad_token, why in ((expired, "expired"), (foreign, "not a token"), (forged, "signature")):
        status, _, text = await upload(bad_token)
        assert status == 401, (why, status, text)
        assert why in text, text
    # Burned (uv burns its token after the upload): the signature holds, the record says revoked.
    connector = aiohttp.TCPConnector(ssl=gate.client_tls())
    async with (
        aiohttp.ClientSession(connector=connector) as client,
        client.post(f"{gate.url}/_/oidc/burn-token", json={"token": token}) as resp,
    ):
        assert resp.status == 202
    status, _, text = await upload(token)
    assert status == 401
    assert "revoked" in text
    assert stored(gate.index, publisher.project) == []
    assert await records(stack_env["TRUSTPUB_DATABASE_URL"], publisher.project) == []


async def test_a_truncated_body_stores_nothing(http, stack, gate, publisher, stack_env, tmp_path):
    token = await upload_token(http, stack, publisher)
    good = wheel(tmp_path, publisher.project, payload=os.urandom(300_000))
    data = form(metadata(publisher.project, "0.0.1"), good.name, good.read_bytes())
    payload = data()
    body = bytearray()

    class Sink:
        async def write(self, chunk: bytes) -> None:
            body.extend(chunk)

    await payload.write(Sink())
    auth = basic("__token__", token)
    head = (
        f"POST /legacy/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {payload.content_type}\r\n"
        f"Content-Length: {len(body)}\r\nAuthorization: {auth}\r\n\r\n"
    ).encode()
    port = int(gate.url.rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=gate.client_tls())
    writer.write(head + bytes(body[: len(body) * 2 // 3]))  # two thirds of the file, then gone
    await writer.drain()
    writer.close()
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    mint_id = claims_of(token)["jti"]
    (refusal,) = await until(
        lambda: audit_rows(db, "upload.refused", mint_id), "the truncated upload's audit row"
    )
    assert refusal["code"] == "invalid-upload"
    assert stored(gate.index, publisher.project) == []
    assert await records(db, publisher.project) == []


async def test_a_body_over_the_limit_is_413_and_stores_nothing(http, stack, small_gate, publisher, stack_env):
    token = await upload_token(http, stack, publisher)
    fields = metadata(publisher.project, "0.0.1")
    filename = f"{publisher.project.replace('-', '_')}-0.0.1-py3-none-any.whl"
    # Declared too large (Content-Length): refused before a byte of it is read.
    status, _, text = await post(small_gate, token, form(fields, filename, io.BytesIO(os.urandom(2 << 20))))
    assert status == 413, text
    # Not declared (chunked): refused when the file passes the limit, the index's request
    # aborted before its end.
    status, _, text = await post(
        small_gate, token, form(fields, filename, random_chunks(3 << 20, hashlib.sha256()))
    )
    assert status == 413, text
    assert "exceeds the upload limit" in text
    assert stored(small_gate.index, publisher.project) == []
    assert await records(stack_env["TRUSTPUB_DATABASE_URL"], publisher.project) == []


# --- the index down, many at once, a big one ------------------------------------------------------


async def test_the_index_down_is_503_and_nothing_is_recorded(
    http, stack, index, upload_tls, publisher, stack_env, tmp_path
):
    dead = start_gate(
        stack, index, upload_tls, "-dead", TRUSTPUB_INDEX_UPLOAD_URL=f"http://127.0.0.1:{free_port()}/"
    )
    try:
        token = await upload_token(http, stack, publisher)
        good = wheel(tmp_path, publisher.project)
        status, _, text = await post(
            dead, token, form(metadata(publisher.project, "0.0.1"), good.name, good.read_bytes())
        )
        assert status == 503, text
        assert "index does not answer" in text
        assert await records(stack_env["TRUSTPUB_DATABASE_URL"], publisher.project) == []
    finally:
        stack.stop(dead.key)


async def test_concurrent_uploads_of_different_files_all_land_with_their_records(
    http, stack, gate, publisher, stack_env, tmp_path
):
    token = await upload_token(http, stack, publisher)
    versions = [f"1.0.{n}" for n in range(6)]
    paths = [wheel(tmp_path, publisher.project, v, payload=os.urandom(200_000)) for v in versions]
    results = await asyncio.gather(
        *(
            post(gate, token, form(metadata(publisher.project, v), p.name, p.read_bytes()))
            for v, p in zip(versions, paths, strict=True)
        )
    )
    assert [r[0] for r in results] == [200] * len(paths), results
    assert stored(gate.index, publisher.project) == sorted(p.name for p in paths)
    got = {
        r["filename"]: r["sha256"]
        for r in await records(stack_env["TRUSTPUB_DATABASE_URL"], publisher.project)
    }
    assert got == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _rss_peak_reset(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark of ``pid`` (VmHWM); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


async def test_a_100_mb_upload_passes_with_the_gates_memory_bounded(
    http, stack, gate, publisher, stack_env, record_property
):
    token = await upload_token(http, stack, publisher)
    size = 100 * 10**6
    filename = f"{publisher.project.replace('-', '_')}-9.9.9-py3-none-any.whl"
    proc = psutil.Process(stack.procs[gate.key].popen.pid)
    # Warm up the gate's paths (first upload, TLS, the bus) with a small file first.
    status, _, text = await post(
        gate,
        token,
        form(metadata(publisher.project, "9.9.8"), filename.replace("9.9.9", "9.9.8"), b"x" * 1000),
    )
    assert status == 200, text
    before = proc.memory_info().rss
    exact_peak = _rss_peak_reset(proc.pid)
    sampled = before
    digest = hashlib.sha256()
    task = asyncio.ensure_future(
        post(
            gate,
            token,
            form(metadata(publisher.project, "9.9.9"), filename, random_chunks(size, digest)),
            timeout=600,
        )
    )
    started = time.monotonic()
    while not task.done():
        sampled = max(sampled, proc.memory_info().rss)
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - started
    status, _, text = await task
    assert status == 200, text
    after = proc.memory_info().rss
    peak = max(sampled, _hwm(proc.pid) if exact_peak else 0)
    figures = {
        "rss_before_mb": round(before / 1e6, 2),
        "rss_after_mb": round(after / 1e6, 2),
        "rss_peak_mb": round(peak / 1e6, 2),
        "growth_mb": round((peak - before) / 1e6, 2),
        "seconds": round(elapsed, 2),
        "throughput_mb_s": round(size / 1e6 / elapsed, 1),
        "peak_from_kernel": exact_peak,
    }
    record_property("gate_100mb_upload", figures)
    print("gate 100 MB upload:", figures)
    # "A few MB": the gate holds a chunk or two of the file at a time, never the file.
    assert peak - before < 8 * 10**6, figures
    (record,) = [
        r
        for r in await records(stack_env["TRUSTPUB_DATABASE_URL"], publisher.project)
        if r["version"] == "9.9.9"
    ]
    assert record["size"] == size
    assert record["sha256"] == digest.hexdigest()
    assert (gate.index.packages / filename).stat().st_size == size


async def test_a_file_the_gate_never_saw_has_no_provenance(gate, publisher):
    status, _ = await statement(gate, publisher.project, f"{publisher.project}-0.0.1.tar.gz")
    assert status == 404


def test_a_statement_is_never_an_upload_token_and_a_token_never_a_statement():
    key_text = uploadtoken.generate_signing_key()
    signer = Signer(minter_keys.parse(key_text), prefix="", issuer="trustpub", audience="trustpub-index")
    from trustpub.messages.v1 import MintGrant, UploadRecord  # noqa: PLC0415

    record = UploadRecord(
        upload_id="u",
        project="p",
        version="1",
        filename="p-1.tar.gz",
        sha256="0" * 64,
        size=1,
        uploaded_at=1,
        mint_id="m",
        publisher_id="s",
    )
    keys = {signer.active.kid: signer.active.public}
    jws = signer.statement(record, now=int(time.time()))
    assert provenance.verify(jws, keys=keys)["upload"]["filename"] == "p-1.tar.gz"
    with pytest.raises(uploadtoken.InvalidToken):
        uploadtoken.verify(jws, prefix="", keys=keys, issuer="trustpub", audience="trustpub-index")
    token = signer.mint(
        MintGrant(
            mint_id="m", publisher_id="s", projects=["p"], issued_at=1, expires_at=int(time.time()) + 60
        )
    )
    with pytest.raises(uploadtoken.InvalidToken):
        provenance.verify(token, keys=keys)


_ = ssl
