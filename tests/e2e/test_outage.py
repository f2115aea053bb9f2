"""Outages: a stopped or stuck service gives 503 within the deadline; the stack recovers."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import signal
import ssl
import time
from typing import Any

import aiohttp
import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from deploy.devstack.servers import free_port
from tests.support.e2e import mint
from tests.support.registry import wait_until
from tests.support.waiting import bounded

DEADLINE_S = 3.0  # TRUSTPUB_REQUEST_TIMEOUT of the e2e stack


@pytest.mark.parametrize("service", ["verifier", "registry", "minter"])
async def test_stopped_service_gives_503_fast_and_the_stack_recovers(http, stack, publisher, service):
    stack.stop(service)
    try:
        started = time.monotonic()
        status, body, headers = await bounded(mint(http, stack, publisher.token()))
        elapsed = time.monotonic() - started
        assert status == 503, body
        assert body["errors"][0]["code"] == "unavailable"
        assert headers["Retry-After"] == "1"
        # Within the deadline (a stage may be restarting: it is asked again until then), never a
        # hang; the upper bound is generous for a loaded machine.
        assert elapsed < 2 * DEADLINE_S
    finally:
        stack.start(service)
    status, body, _ = await bounded(mint(http, stack, publisher.token()))
    assert status == 200, body


async def test_stuck_service_gives_503_at_the_deadline_not_a_hang(http, stack, publisher):
    pid = stack.procs["registry"].popen.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, body, _ = await bounded(mint(http, stack, publisher.token()))
        elapsed = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert status == 503, body
    assert body["errors"][0]["code"] == "unavailable"
    assert "did not answer" in body["errors"][0]["description"]
    assert DEADLINE_S - 0.5 < elapsed < 2 * DEADLINE_S
    status, body, _ = await bounded(mint(http, stack, publisher.token()))
    assert status == 200, body


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trustpub test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_gateway_serves_https_when_given_a_certificate(stack, publisher, tmp_path):
    cert, key = _self_signed(tmp_path)
    port = free_port()
    stack.start(
        "gateway",
        replica="-tls",
        extra={"TRUSTPUB_TLS_CERT": str(cert), "TRUSTPUB_TLS_KEY": str(key), "TRUSTPUB_HTTP_PORT": str(port)},
    )
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            async with http.get(f"https://127.0.0.1:{port}/_/oidc/audience", ssl=ctx) as resp:
                assert resp.status == 200
            async with http.post(
                f"https://127.0.0.1:{port}/_/oidc/mint-token", ssl=ctx, json={"token": publisher.token()}
            ) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["success"] is True
    finally:
        stack.stop("gateway-tls")


async def test_sigterm_drains_the_gateway_cleanly(stack):
    assert stack.stop("gateway") == 0
    stack.start("gateway")


async def _mint_record(database_url: str, jti: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        row = await conn.fetchrow(
            "SELECT id::text, attempts, delivered_at IS NOT NULL AS delivered "
            "FROM mints WHERE token_key = $1",
            jti,
        )
        return dict(row) if row is not None else {}
    finally:
        await conn.close()


async def test_a_mint_stalled_past_the_deadline_does_not_burn_the_token(http, stack, stack_env, publisher):
    # The registry committed the grant, the minter was stopped past the deadline: the client
    # got 503. Its retry with the same OIDC token gets the upload token of that same record.
    token = publisher.token()
    jti = _claims_of(token)["jti"]
    pid = stack.procs["minter"].popen.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        status, body, headers = await bounded(mint(http, stack, token))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert status == 503, body
    first_exchange = headers["X-Trustpub-Exchange-Id"]
    record = await _mint_record(stack_env["TRUSTPUB_DATABASE_URL"], jti)
    assert record["attempts"] == 1
    assert not record["delivered"]

    status, body, headers = await bounded(mint(http, stack, token), 60)
    assert status == 200, body
    minted = _claims_of(body["token"].removeprefix("trustpub-"))
    assert minted["jti"] == record["id"]

    async def delivered() -> bool:
        return bool((await _mint_record(stack_env["TRUSTPUB_DATABASE_URL"], jti))["delivered"])

    await wait_until(delivered, timeout=30)
    record = await _mint_record(stack_env["TRUSTPUB_DATABASE_URL"], jti)
    assert record["attempts"] == 2
    # Each answer audited once, and delivered now: the token is single use again.
    conn = await asyncpg.connect(stack_env["TRUSTPUB_DATABASE_URL"], timeout=5)
    try:

        async def audited() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM audit_events "
                "WHERE exchange_id = ANY($1::text[]) AND kind LIKE 'exchange.%'",
                [first_exchange, headers["X-Trustpub-Exchange-Id"]],
            )
            return n >= 2

        await wait_until(audited, timeout=30)
        rows = await conn.fetch(
            "SELECT exchange_id, kind FROM audit_events WHERE exchange_id = ANY($1::text[]) ORDER BY id",
            [first_exchange, headers["X-Trustpub-Exchange-Id"]],
        )
    finally:
        await conn.close()
    kinds = sorted(
        (r["exchange_id"] == first_exchange, r["kind"]) for r in rows if r["kind"] != "publisher.pinned"
    )
    assert kinds == sorted(
        [
            (True, "mint.granted"),
            (True, "exchange.failed"),
            (False, "mint.regranted"),
            (False, "exchange.succeeded"),
        ]
    )
    status, body, _ = await bounded(mint(http, stack, token))
    assert (status, body["errors"][0]["code"]) == (422, "invalid-reuse-token")


def _claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
