"""A real Prometheus scraping a :class:`~deploy.devstack.stack.Stack`, for ``make up`` and tests.

The binary is Debian's ``prometheus`` package (``make ops-tools`` installs it) or any
``prometheus`` on the PATH. Its configuration is written at start, because the services'
ops ports are chosen at start: every process of the stack is a target in a file-based
service discovery file (``targets.json``), rewritten by :meth:`PrometheusServer.update`
when processes come and go, and the rules are trustpub's own (``deploy/prometheus/rules.yml``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.devstack.servers import DevServerError, free_port, wait_for_port
from deploy.devstack.stack import SERVICES, Stack

# In a source checkout (make up, the tests): the rules that promtool checks and tests.
REPO_RULES = Path(__file__).resolve().parents[1] / "prometheus" / "rules.yml"


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found:
        return found
    msg = "prometheus not found: `make ops-tools` installs it (Debian's prometheus package)"
    raise DevServerError(msg)


def stack_targets(stack: Stack) -> list[dict[str, Any]]:
    """File-SD entries: one per running process, labelled with its service (``component``)."""
    groups: list[dict[str, Any]] = []
    for key, proc in stack.procs.items():
        if proc.popen.poll() is not None:
            continue
        service = next((name for name in SERVICES if key.startswith(name)), key)
        groups.append(
            {"targets": [f"127.0.0.1:{proc.ops_port}"], "labels": {"component": service, "process": key}}
        )
    return groups


def config(targets_file: Path, *, scrape_interval: str, rule_files: list[Path]) -> str:
    """The Prometheus configuration (YAML) for the local stack."""
    rules = "".join(f"  - {json.dumps(str(p))}\n" for p in rule_files)
    return (
        "# Written at start by deploy.devstack.prometheus: the local stack's ops ports.\n"
        "global:\n"
        f"  scrape_interval: {scrape_interval}\n"
        f"  evaluation_interval: {scrape_interval}\n"
        f"  scrape_timeout: {scrape_interval}\n"
        + (f"rule_files:\n{rules}" if rules else "")
        + "scrape_configs:\n"
        "  - job_name: trustpub\n"
        "    file_sd_configs:\n"
        f"      - files: [{json.dumps(str(targets_file))}]\n"
        "        refresh_interval: 5s\n"
    )


@dataclass
class PrometheusServer:
    """A Prometheus process storing under ``data_dir``, answering on 127.0.0.1:``port``."""

    data_dir: Path
    port: int = 0
    scrape_interval: str = "5s"
    rule_files: list[Path] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets_file(self) -> Path:
        return self.data_dir / "targets.json"

    def update(self, targets: list[dict[str, Any]]) -> None:
        """Replace the scrape targets (atomically: Prometheus never reads half a file)."""
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets, indent=2))
        tmp.replace(self.targets_file)

    def start(
        self, targets: list[dict[str, Any]], *, log_file: Path | None = None, timeout: float = 30
    ) -> PrometheusServer:
        binary = prometheus_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.update(targets)
        config_file = self.data_dir / "prometheus.yml"
        config_file.write_text(
            config(self.targets_file, scrape_interval=self.scrape_interval, rule_files=self.rule_files)
        )
        args = [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={self.data_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=2d",
        ]
        with contextlib.ExitStack() as files:
            # The child keeps its own copy of the descriptor; ours closes when it has started.
            out = files.enter_context(log_file.open("ab")) if log_file else subprocess.DEVNULL
            self.proc = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)  # noqa: S603
        wait_for_port(self.port, timeout, self.proc)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                msg = f"prometheus did not become ready on {self.url} (config {config_file})"
                raise DevServerError(msg)
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def api(self, path: str, **params: str) -> Any:  # noqa: ANN401  (Prometheus' JSON answers vary)
        """GET ``/api/v1/<path>`` and return its ``data``.

        Raises:
            DevServerError: Prometheus answered with an error (e.g. a query that does not parse).
        """
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            msg = f"prometheus {path} {params}: {body.get('errorType')}: {body.get('error')}"
            raise DevServerError(msg)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (empty when nothing matches)."""
        data = self.api("query", query=expr)
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)


def serve_stack(
    stack: Stack, data_dir: Path, *, port: int = 0, scrape_interval: str = "5s", log_file: Path | None = None
) -> PrometheusServer:
    """Start Prometheus scraping every process of ``stack``, with trustpub's rules when present."""
    rules = [Path(os.environ.get("TRUSTPUB_PROMETHEUS_RULES", REPO_RULES))]
    server = PrometheusServer(
        data_dir, port=port, scrape_interval=scrape_interval, rule_files=[p for p in rules if p.exists()]
    )
    return server.start(stack_targets(stack), log_file=log_file)


def serve_for_up(stack: Stack, run_dir: Path, port: int) -> PrometheusServer:
    """``make up-prometheus`` (``up --prometheus``): Prometheus under ``run_dir``, said aloud."""
    server = serve_stack(stack, run_dir / "prometheus", port=port, log_file=run_dir / "prometheus.log")
    rules = ", ".join(map(str, server.rule_files)) or "none"
    print(  # noqa: T201  (make up talks to the person who ran it)
        f"[trustpub up] Prometheus at {server.url} scrapes every service "
        f"(config {server.data_dir / 'prometheus.yml'}, rules {rules})",
        flush=True,
    )
    return server


__all__ = ["PrometheusServer", "config", "prometheus_binary", "serve_for_up", "serve_stack", "stack_targets"]
