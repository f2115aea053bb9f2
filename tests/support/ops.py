"""What the operations tests share: the repository's paths, and finding the tools they need.

A missing tool (kubectl, promtool, prometheus, an `ops` extra package) skips the test on a
developer's machine, with the command that installs it, and fails it in CI (``CI=true``),
where ``.ci/run`` runs ``make ops-tools`` first: a check that silently skipped in CI would
prove nothing.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
DASHBOARD_JSON = DEPLOY / "dashboards" / "exchange-flow.json"
METRICS_DOC = REPO / "docs" / "metrics.md"
SERVICES = ("gateway", "jwks", "verifier", "registry", "minter", "gate")
OPS_PORTS = {"gateway": 9100, "jwks": 9101, "verifier": 9102, "registry": 9103, "minter": 9104, "gate": 9105}
INSTALL_HINT = "make ops-tools"


def missing(what: str) -> NoReturn:
    """Skip locally, fail in CI."""
    msg = f"{what} is not installed (run `{INSTALL_HINT}`)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{msg}; CI must have it")
    pytest.skip(msg)


def need_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python module {name} (the `ops` extra)")


def need_binary(name: str) -> str:
    # The venv's bin first: the `ops` extra's kubectl is the pinned one.
    candidate = Path(sys.prefix) / "bin" / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        missing(name)
    return found


def kubectl() -> str:
    """A kubectl whose built-in kustomize is v5 or newer (the manifests use its syntax)."""
    binary = need_binary("kubectl")
    out = subprocess.run(  # noqa: S603  (a tool found above)
        [binary, "version", "--client"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    found = re.search(r"Kustomize Version: v(\d+)", out)
    if found is None or int(found.group(1)) < 5:
        missing(f"kubectl with kustomize v5 (found {binary}: {out.strip()!r})")
    return binary


def documented_metrics() -> set[str]:
    """Metric names listed in docs/metrics.md (the names in its tables' first column)."""
    names = set()
    for line in METRICS_DOC.read_text().splitlines():
        cell = re.match(r"\|\s*`(trustpub_[a-z0-9_]+)`", line)
        if cell:
            names.add(cell.group(1))
    return names


def metric_names(expr: str) -> set[str]:
    """``trustpub_*`` metric names a PromQL expression selects (histogram suffixes removed)."""
    names = set(re.findall(r"\btrustpub_[a-z0-9_]+", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


# --- the rendered manifests, and what the Tiltfile adds to them ------------------------------

TILTFILE = REPO / "Tiltfile"
# Where the Tiltfile keeps the dev cluster's bus secrets (git-ignored, made at `tilt up`).
TILT_BUS_DIR = ".run/k8s-dev"


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize k8s/overlays/<overlay>``, parsed."""
    yaml = need_module("yaml")
    done = subprocess.run(  # noqa: S603  (a kubectl found by need_binary)
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


class Tilt:
    """Records the Tiltfile's calls to Tilt's API."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def builtin(self, name: str, result: Any = None) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            if name == "local":
                # A Blob in Tilt; here a token that k8s_yaml's arguments can be traced back to.
                return f"<local #{len(self.called('local')) - 1}>"
            return result if result is not None else {"tilt": name, "args": list(args), **kwargs}

        call.__name__ = name
        return call

    def called(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(a, k) for n, a, k in self.calls if n == name]


TILT_BUILTINS = (
    "allow_k8s_contexts",
    "k8s_yaml",
    "k8s_resource",
    "port_forward",
    "sync",
    "run",
    "fall_back_on",
    "local_resource",
    "docker_build",
    "local",
)


def run_tiltfile() -> Tilt:
    """The Tiltfile, run against stand-ins for Tilt's built-ins that record each call."""
    starlark = need_module("starlark")
    ast = starlark.parse("Tiltfile", TILTFILE.read_text(), starlark.Dialect.extended())
    tilt = Tilt()
    module = starlark.Module()
    for name in TILT_BUILTINS:
        module.add_callable(name, tilt.builtin(name))
    module.add_callable("kustomize", tilt.builtin("kustomize", result="<kustomize output>"))

    def load(path: str) -> Any:
        # Tilt's official extension; Tilt fetches it, the stand-in records its calls.
        assert path == "ext://restart_process", path
        ext = starlark.Module()
        ext.add_callable("docker_build_with_restart", tilt.builtin("docker_build_with_restart"))
        return ext.freeze()

    starlark.eval(module, ast, starlark.Globals.standard(), starlark.FileLoader(load))
    return tilt


def _host_command(argv: list[str], bus_dir: Path) -> list[str]:
    """A Tiltfile command as run here: .venv's tools are this interpreter's, and the bus
    directory is ``bus_dir`` instead of the repository's .run/k8s-dev."""
    out = []
    for n, arg in enumerate(argv):
        if n == 0 and arg.startswith(".venv/bin/"):
            arg = str(Path(sys.prefix) / "bin" / arg.removeprefix(".venv/bin/"))  # noqa: PLW2901
        elif arg == TILT_BUS_DIR or arg.startswith(TILT_BUS_DIR + "/"):
            arg = str(bus_dir) + arg.removeprefix(TILT_BUS_DIR)  # noqa: PLW2901
        out.append(arg)
    return out


def tilt_made_objects(bus_dir: Path) -> tuple[dict[str, Any], ...]:
    """What `tilt up` applies besides the dev overlay: the Tiltfile's `local` commands run as
    Tilt runs them (in order, from the repository), with their secrets under ``bus_dir``; the
    objects of every output that the Tiltfile gives to k8s_yaml."""
    yaml = need_module("yaml")
    tilt = run_tiltfile()
    outputs: dict[str, str] = {}
    for n, (args, _) in enumerate(tilt.called("local")):
        command = args[0]
        assert isinstance(command, list), f"a list, not a shell string: {command!r}"
        done = subprocess.run(  # noqa: S603  (the Tiltfile's own commands)
            _host_command(command, bus_dir),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (command, done.stderr)
        outputs[f"<local #{n}>"] = done.stdout
    docs: list[dict[str, Any]] = []
    for args, _ in tilt.called("k8s_yaml"):
        if args[0] in outputs:
            docs.extend(doc for doc in yaml.safe_load_all(outputs[args[0]]) if doc)
    return tuple(docs)


def _pod_references(pod: dict[str, Any]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for volume in pod.get("volumes", []):
        sources = [volume, *volume.get("projected", {}).get("sources", [])]
        found |= {
            ("Secret", s["secret"].get("secretName", s["secret"].get("name")))
            for s in sources
            if "secret" in s
        }
        found |= {("ConfigMap", s["configMap"]["name"]) for s in sources if "configMap" in s}
    for container in pod["containers"] + pod.get("initContainers", []):
        refs = [e.get("valueFrom", {}) for e in container.get("env", [])] + container.get("envFrom", [])
        found |= {("Secret", r["secretKeyRef"]["name"]) for r in refs if "secretKeyRef" in r}
        found |= {("ConfigMap", r["configMapKeyRef"]["name"]) for r in refs if "configMapKeyRef" in r}
        found |= {("Secret", r["secretRef"]["name"]) for r in refs if "secretRef" in r}
        found |= {("ConfigMap", r["configMapRef"]["name"]) for r in refs if "configMapRef" in r}
    return found


def referenced_by_pods(docs: tuple[dict[str, Any], ...]) -> set[tuple[str, str]]:
    """(kind, name) of every Secret and ConfigMap that a workload's pod template references."""
    found: set[tuple[str, str]] = set()
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            found |= _pod_references(doc["spec"]["template"]["spec"])
    return found


# `<query> <comparison> <number>`: the form every alert has (see rules.yml's header), so
# that the live test can evaluate the query with `bool` and see it match real series.
ALERT_FORM = re.compile(
    r"^(?P<lhs>.*\S)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<num>-?[0-9.]+(?:e-?[0-9]+)?)\s*$", re.DOTALL
)


def rules() -> list[dict[str, str]]:
    yaml = need_module("yaml")
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
