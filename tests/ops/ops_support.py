"""What the operations tests share: the repository's paths, and finding the tools they need.

A missing tool (kubectl, promtool, prometheus, an `ops` extra package) skips the test on a
developer's machine, with the command that installs it, and fails it in CI (``CI=true``),
where ``.ci/run`` runs ``make ops-tools`` first: a check that silently skipped in CI would
prove nothing.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
DASHBOARD_JSON = DEPLOY / "dashboards" / "exchange-flow.json"
METRICS_DOC = REPO / "docs" / "metrics.md"
SERVICES = ("gateway", "jwks", "verifier", "registry", "minter")
OPS_PORTS = {"gateway": 9100, "jwks": 9101, "verifier": 9102, "registry": 9103, "minter": 9104}
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
