"""Run trustpub's five services as separate processes, as ``make up``, the end-to-end
tests and the benchmark do.

Each service is ``python -m trustpub.<name>`` with its ``TRUSTPUB_*`` environment and its
own ops port; it counts as started when its ``/readyz`` answers 200.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from deploy.devstack.servers import DevServerError, bus_env, free_port, port_if_free

from trustpub.messages import uploadtoken
from trustpub.runtime.bus import minter_key_ids
from trustpub.runtime.seal import write_secret

SERVICES = ("jwks", "verifier", "registry", "minter", "gateway")
# Each service's default ops port (its config.py); `make up` keeps them when they are free.
# The upload gate is started on its own (`start("gate", extra=...)`): it needs an index.
DEFAULT_OPS_PORTS = {
    "gateway": 9100,
    "jwks": 9101,
    "verifier": 9102,
    "registry": 9103,
    "minter": 9104,
    "gate": 9105,
}


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    ops_port: int
    log: Path | None


@dataclass
class Stack:
    """Service processes sharing one environment (NATS, database, subject root, issuers)."""

    env: dict[str, str]
    log_dir: Path | None = None  # None: services write to this process's stdout
    procs: dict[str, Proc] = field(default_factory=dict)
    http_port: int = 0
    default_ports: bool = False  # use DEFAULT_OPS_PORTS where free (make up); else any free port

    def service_env(self) -> dict[str, str]:
        """The stack's environment, completed as an operator would: the bus secrets and CA of
        a NATS server this process started (devstack/servers.py), and the gateway's pin of the
        minter's key ids, the key file created first if it does not exist yet."""
        env = {**bus_env(self.env.get("TRUSTPUB_NATS_URL", "")), **self.env}
        if "TRUSTPUB_MINTER_KEY_IDS" not in self.env:
            text = env.get("TRUSTPUB_MINTER_KEY", "")
            path = env.get("TRUSTPUB_MINTER_KEY_FILE", "")
            if not text and path:
                if not Path(path).exists():
                    write_secret(Path(path), uploadtoken.generate_signing_key() + "\n")
                text = Path(path).read_text()
            if text:
                env["TRUSTPUB_MINTER_KEY_IDS"] = ",".join(minter_key_ids(text))
        return env

    @property
    def base_url(self) -> str:
        scheme = "https" if self.env.get("TRUSTPUB_TLS_CERT") else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    def ops_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.procs[name].ops_port}"

    def start(
        self,
        name: str,
        *,
        replica: str = "",
        extra: dict[str, str] | None = None,
        wait: bool = True,
        timeout: float = 30,
    ) -> Proc:
        """Start ``name`` (a key of :data:`SERVICES`); ``replica`` names a second copy."""
        key = f"{name}{replica}"
        ops_port = free_port()
        if self.default_ports and not replica:
            ops_port = port_if_free(DEFAULT_OPS_PORTS[name]) or ops_port
        env = {**os.environ, **self.service_env(), "TRUSTPUB_OPS_PORT": str(ops_port), **(extra or {})}
        if name == "gateway" and not replica:
            self.http_port = self.http_port or int(env.get("TRUSTPUB_HTTP_PORT", "0")) or free_port()
            env["TRUSTPUB_HTTP_PORT"] = str(self.http_port)
        elif name == "gateway" and not (extra or {}).get("TRUSTPUB_HTTP_PORT"):
            env["TRUSTPUB_HTTP_PORT"] = str(free_port())
        elif name == "gate":
            # Its own HTTP port; /_/oidc/* goes to this stack's gateway unless told otherwise.
            env["TRUSTPUB_HTTP_PORT"] = (extra or {}).get("TRUSTPUB_HTTP_PORT") or str(free_port())
            env["TRUSTPUB_GATEWAY_URL"] = (extra or {}).get("TRUSTPUB_GATEWAY_URL", self.base_url)
        out: IO[bytes] | None = None
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = self.log_dir / f"{key}.log"
            out = log.open("ab")
        popen = subprocess.Popen(  # noqa: S603  (our own interpreter and module)
            [sys.executable, "-m", f"trustpub.{name}"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if out is not None:
            out.close()  # the child holds its own descriptor
        proc = Proc(key, popen, ops_port, log)
        self.procs[key] = proc
        if wait:
            self.wait_ready(key, timeout)
        return proc

    def ready(self, key: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.ops_url(key)}/readyz", timeout=1) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, key: str, timeout: float = 30) -> None:
        proc = self.procs[key]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise DevServerError(f"{key} exited with {proc.popen.returncode}{self._tail(proc)}")
            if self.ready(key):
                return
            time.sleep(0.05)
        raise DevServerError(f"{key} not ready after {timeout} s{self._tail(proc)}")

    @staticmethod
    def _tail(proc: Proc) -> str:
        if proc.log is None or not proc.log.exists():
            return ""
        return "\n" + proc.log.read_text(errors="replace")[-3000:]

    def start_all(self, timeout: float = 30) -> None:
        """Start every service; if one does not become ready, stop them all and raise."""
        try:
            for name in SERVICES:
                self.start(name, wait=False)
            for name in SERVICES:
                self.wait_ready(name, timeout)
        except BaseException:
            self.stop_all()
            raise

    def stop(self, key: str, sig: signal.Signals = signal.SIGTERM, timeout: float = 15) -> int | None:
        proc = self.procs.pop(key, None)
        if proc is None or proc.popen.poll() is not None:
            return None if proc is None else proc.popen.returncode
        proc.popen.send_signal(sig)
        try:
            return proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            return proc.popen.wait(5)

    def stop_all(self) -> None:
        for key in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(key)

    def metrics(self, key: str) -> str:
        with urllib.request.urlopen(f"{self.ops_url(key)}/metrics", timeout=5) as resp:  # noqa: S310
            return str(resp.read().decode())

    def describe(self) -> str:
        return json.dumps({k: {"pid": p.popen.pid, "ops_port": p.ops_port} for k, p in self.procs.items()})
