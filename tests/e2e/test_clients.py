"""The publishing clients, unchanged, against trustpub: `uv publish` with trusted publishing.

uv derives the OIDC endpoints from the upload URL's host and speaks only https there, so the
test stands up what an index operator runs: an https index host whose `/_/oidc/*` reaches the
gateway and whose upload endpoint accepts the minted token after asking trustpub's
introspection. uv obtains its OIDC token from the local issuer exactly as in a GitHub Actions
job (`ACTIONS_ID_TOKEN_REQUEST_URL`), exchanges it, uploads, and burns the token.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import os
import shutil
import ssl
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from deploy.devstack.publish_demo import write_wheel
from deploy.devstack.servers import free_port

UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


def _certificates(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (rustls refuses a CA as leaf)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trustpub test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def _wheel(tmp: Path, project: str) -> Path:
    """A minimal valid wheel of ``project`` 0.0.1."""
    return write_wheel(tmp, project, "0.0.1", b"")


class Index:
    """An index host: `/_/oidc/*` forwarded to the gateway, uploads checked by introspection."""

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.calls: list[tuple[str, int]] = []
        self.uploads: list[dict[str, Any]] = []

    async def forward(self, request: web.Request) -> web.Response:
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                request.method,
                self.gateway + request.path_qs,
                data=await request.read(),
                headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
            ) as resp,
        ):
            body = await resp.read()
            self.calls.append((request.path, resp.status))
            return web.Response(body=body, status=resp.status, content_type="application/json")

    async def upload(self, request: web.Request) -> web.Response:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        user, _, token = (
            base64.b64decode(value).decode().partition(":") if scheme == "Basic" else ("", "", "")
        )
        form = await request.post()
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.gateway}/_/oidc/introspect", json={"token": token}) as resp,
        ):
            info = await resp.json()
        name = str(form.get("name", ""))
        allowed = user == "__token__" and info.get("active") and name in info.get("projects", [])
        self.uploads.append({"name": name, "user": user, "info": info, "token": token, "allowed": allowed})
        return web.Response(status=200 if allowed else 403)


async def test_uv_publish_with_trusted_publishing(stack, publisher, e2e_issuer, tmp_path):
    if UV is None:
        pytest.fail("uv is not installed: it is part of the test extra (make install)")
    ca, cert, key = _certificates(tmp_path)
    index = Index(stack.base_url)
    app = web.Application(client_max_size=10 * 2**20)
    app.router.add_route("*", "/_/oidc/{tail:.*}", index.forward)
    app.router.add_post("/legacy/", index.upload)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    e2e_issuer.profile = {"owner": publisher.owner, "repo": "demo", "owner_id": "1001"}
    try:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("UV_", "GITHUB_", "ACTIONS_"))},
            "SSL_CERT_FILE": str(ca),
            "GITHUB_ACTIONS": "true",
            "ACTIONS_ID_TOKEN_REQUEST_URL": f"{e2e_issuer.base_url}/token",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": e2e_issuer.request_token,
            "UV_NO_CONFIG": "1",
        }
        proc = await asyncio.create_subprocess_exec(
            UV,
            "publish",
            "--publish-url",
            f"https://127.0.0.1:{port}/legacy/",
            "--trusted-publishing",
            "always",
            str(_wheel(tmp_path, publisher.project)),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output = (await asyncio.wait_for(proc.communicate(), 60))[0].decode(errors="replace")
    finally:
        e2e_issuer.profile = {}
        await runner.cleanup()
    assert proc.returncode == 0, output
    paths = [path for path, _ in index.calls]
    assert "/_/oidc/audience" in paths
    assert ("/_/oidc/mint-token", 200) in index.calls
    assert ("/_/oidc/burn-token", 202) in index.calls  # uv revokes the token after its upload
    (upload,) = index.uploads
    assert upload["allowed"], upload["info"]
    assert upload["info"]["provenance"]["repository"] == f"{publisher.owner}/demo"
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{stack.base_url}/_/oidc/introspect", json={"token": upload["token"]}) as resp,
    ):
        assert await resp.json() == {"active": False}  # burned
