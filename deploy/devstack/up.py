"""``make up``: the whole stack on one machine, with a demo exchange.

Starts NATS and PostgreSQL under ``.run/`` (unless ``TRUSTPUB_NATS_URL`` /
``TRUSTPUB_DATABASE_URL`` name existing ones; NATS with the generated authorization, each
service its own user, and TLS from a development CA, all under ``.run/bus``), applies
migrations, starts a development
OIDC issuer that plays GitHub Actions, the five services, registers a demo publisher, and
runs a demo exchange with the ``id`` library (the client code twine and the GitHub action
use). Then it keeps running until Ctrl-C, which stops every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import sys
import threading
import urllib.request
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import asyncpg
from deploy.devstack import publish_demo
from deploy.devstack.bus import DevBus
from deploy.devstack.index import DevCertificate, PypiServer
from deploy.devstack.issuer import DevIssuer, SigningKey, offline_builtins_toml
from deploy.devstack.prometheus import serve_for_up
from deploy.devstack.servers import NatsServer, PostgresServer, free_port, port_if_free
from deploy.devstack.stack import Stack

DEMO = {
    "project": "demo-pkg",
    "owner": "octo-org",
    "owner_id": "1001",
    "repository": "demo",
    "workflow": "release.yml",
    "environment": "release",
}


def say(msg: str) -> None:
    print(f"[trustpub up] {msg}", flush=True)  # noqa: T201


def port_or_free(preferred: int) -> int:
    return port_if_free(preferred) or free_port()


async def ensure_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def load_issuer_key(path: Path) -> SigningKey:
    """The dev issuer's key, kept across runs so cached key sets stay valid."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    if path.exists():
        priv = serialization.load_pem_private_key(path.read_bytes(), password=None)
        return SigningKey(kid="dev-1", private=priv)  # type: ignore[arg-type]
    key = SigningKey.generate("dev-1")
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def register_demo(database_url: str) -> None:
    """Register the demo project and publisher (idempotent: an identical publisher is re-used)."""
    from trustpub.registry import cli  # noqa: PLC0415  (the registry's own command)

    db = ["--database-url", database_url]
    cli.main(["project", "add", DEMO["project"], *db])  # exits 2 when it exists: fine
    status = cli.main(
        [
            "publisher",
            "add",
            "github",
            "--project",
            DEMO["project"],
            "--owner",
            DEMO["owner"],
            "--owner-id",
            DEMO["owner_id"],
            "--repository",
            DEMO["repository"],
            "--workflow",
            DEMO["workflow"],
            "--environment",
            DEMO["environment"],
            "--registrant",
            "make-up-demo",
            *db,
        ]
    )
    if status != 0:
        raise SystemExit("registering the demo publisher failed")


def http_json(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def demo_exchange(base_url: str, issuer: DevIssuer) -> bool:
    """What a GitHub Actions job does: ask the audience, get an ID token, exchange it."""
    import id as oidc_id  # noqa: PLC0415  (the `id` library, as twine and the GitHub action use it)

    _, aud = http_json(f"{base_url}/_/oidc/audience")
    audience = aud["audience"]
    os.environ.update(
        {
            "GITHUB_ACTIONS": "true",
            "ACTIONS_ID_TOKEN_REQUEST_URL": f"{issuer.base_url}/token",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": issuer.request_token,
        }
    )
    oidc_token = oidc_id.detect_credential(audience)
    say(f"id.detect_credential({audience!r}) obtained a {len(oidc_token or '')}-byte OIDC token")
    status, body = http_json(f"{base_url}/_/oidc/mint-token", {"token": oidc_token})
    if status != 200:
        say(f"demo exchange FAILED: HTTP {status} {json.dumps(body)}")
        return False
    minted = body["token"]
    payload = minted.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    say(f"demo exchange minted a token expiring at {body['expires']}; its claims:")
    print(json.dumps(claims, indent=2), flush=True)  # noqa: T201
    status, _ = http_json(f"{base_url}/_/oidc/burn-token", {"token": minted})
    say(f"burn-token answered {status}; the token is revoked")
    return True


def start_servers(run: Path, cleanup: ExitStack) -> tuple[str, str]:
    """NATS and PostgreSQL under ``run`` unless the environment names existing ones: their URLs."""
    nats_url = os.environ.get("TRUSTPUB_NATS_URL", "")
    root = os.environ.get("TRUSTPUB_SUBJECT_ROOT", "trustpub")
    if not nats_url:
        bus = DevBus(run / "bus")
        nats = NatsServer(run / "nats", port=port_or_free(14222), roots=(root,), bus=bus).start(
            log_file=run / "nats.log"
        )
        cleanup.callback(nats.stop)
        nats_url = nats.url
        say(
            f"NATS with JetStream on {nats_url}: TLS (CA {bus.ca_cert}), one nkey user per service, "
            f"permissions generated for root {root!r} (data in {run / 'nats'}, secrets in {bus.secrets})"
        )
    db_url = os.environ.get("TRUSTPUB_DATABASE_URL", "")
    if not db_url:
        pg = PostgresServer(run / "pg", port=port_or_free(15432)).start()
        cleanup.callback(pg.stop)
        db_url = asyncio.run(ensure_database(pg.url, "trustpub"))
        say(f"PostgreSQL on {db_url} (data in {run / 'pg'})")
    return nats_url, db_url


def start_index_and_gate(
    stack: Stack, run: Path, cleanup: ExitStack, gate_port: int
) -> tuple[str, PypiServer, DevCertificate]:
    """pypiserver under ``run/index`` (uploads with the gate's credentials only) and the upload
    gate in front of it, over https with a development CA: the upload host's URL, the index,
    the certificate."""
    index = PypiServer(run / "index", port=port_or_free(8080)).start()
    cleanup.callback(index.stop)
    say(f"pypiserver on {index.url} (packages in {index.packages}; uploads: the gate's user only)")
    tls = DevCertificate(run / "upload-tls").ensure()
    port = port_or_free(gate_port)
    stack.start(
        "gate",
        extra={
            **index.gate_env(),
            "TRUSTPUB_HTTP_PORT": str(port),
            "TRUSTPUB_TLS_CERT": str(tls.cert),
            "TRUSTPUB_TLS_KEY": str(tls.key),
        },
    )
    gate_url = f"https://127.0.0.1:{port}"
    say(
        f"upload gate at {gate_url} (POST /legacy/, /_/oidc/* to the gateway, GET /_/provenance/...; "
        f"CA {tls.ca})"
    )
    return gate_url, index, tls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--run-dir", type=Path, default=Path(".run"))
    parser.add_argument("--http-port", type=int, default=int(os.environ.get("TRUSTPUB_HTTP_PORT", "8000")))
    parser.add_argument("--issuer-port", type=int, default=8900)
    parser.add_argument("--gate-port", type=int, default=8443, help="the upload host (https)")
    parser.add_argument("--admin-port", type=int, default=8001, help="the gateway's admin API")
    parser.add_argument("--exit-after-demo", action="store_true", help="stop everything after the demo")
    parser.add_argument("--prometheus", action="store_true", help="also run Prometheus on every ops port")
    args = parser.parse_args(argv)
    run: Path = args.run_dir.resolve()
    run.mkdir(parents=True, exist_ok=True)

    with ExitStack() as cleanup:
        nats_url, db_url = start_servers(run, cleanup)

        from trustpub.registry.migrations import apply  # noqa: PLC0415

        applied = asyncio.run(apply(db_url))
        say(f"migrations applied: {', '.join(applied) or 'none new'}")

        issuer = DevIssuer(
            keys=[load_issuer_key(run / "dev-issuer" / "key.pem")], request_token="dev-request-token"
        )
        cleanup.enter_context(issuer.serve_in_thread(port=port_or_free(args.issuer_port)))
        say(f"development OIDC issuer (plays GitHub Actions) at {issuer.base_url}")
        issuers_file = run / "issuers.toml"
        issuers_file.write_text(
            "# Written by `make up`: GitHub's issuer, with keys from the local development issuer.\n"
            + issuer.issuers_toml()
            + offline_builtins_toml(issuer)
        )

        env = {
            "TRUSTPUB_NATS_URL": nats_url,
            "TRUSTPUB_DATABASE_URL": db_url,
            "TRUSTPUB_ISSUERS_FILE": str(issuers_file),
            "TRUSTPUB_AUDIENCE": os.environ.get("TRUSTPUB_AUDIENCE", "trustpub-dev"),
            "TRUSTPUB_LOG_FORMAT": os.environ.get("TRUSTPUB_LOG_FORMAT", "console"),
            "TRUSTPUB_HTTP_PORT": str(port_or_free(args.http_port)),
            # Read by the gateway alone: its admin API (DESIGN.md, "The admin API").
            "TRUSTPUB_ADMIN_PORT": str(port_or_free(args.admin_port)),
        }
        stack = Stack(env, default_ports=True)
        cleanup.callback(stack.stop_all)
        stack.start_all()
        say(f"services ready: {stack.describe()}")
        if args.prometheus or os.environ.get("TRUSTPUB_PROMETHEUS"):
            cleanup.callback(serve_for_up(stack, run, port_or_free(9090)).stop)
        say(f"gateway at {stack.base_url}  (GET /_/oidc/audience, POST /_/oidc/mint-token)")
        say(
            f"admin API at http://127.0.0.1:{env['TRUSTPUB_ADMIN_PORT']}/admin/v1/ (a token: "
            f"TRUSTPUB_DATABASE_URL={db_url} trustpub admin token create --name me --scope admin)"
        )
        gate_url, index, tls = start_index_and_gate(stack, run, cleanup, args.gate_port)
        register_demo(db_url)
        ok = demo_exchange(stack.base_url, issuer)
        say(f"publishing demo-pkg through the upload gate at {gate_url}, as a GitHub Actions job does")
        ok = (
            publish_demo.publish(
                gate_url, issuer=issuer, index=index, tls=tls, project=DEMO["project"], say=say
            )
            and ok
        )
        if args.exit_after_demo:
            return 0 if ok else 1
        say("running; press Ctrl-C to stop every process")
        stopped = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopped.set())
        while not stopped.wait(1):
            for key, proc in list(stack.procs.items()):
                if proc.popen.poll() is not None:
                    say(f"{key} exited with {proc.popen.returncode}; stopping")
                    stopped.set()
        say("stopping")
    say("stopped")
    return 0


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        sys.exit(main())
