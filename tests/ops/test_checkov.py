"""A maintained scanner on what we ship: checkov (the `ops` extra, pinned in constraints.txt) on
both rendered overlays and on deploy/Dockerfile. No check may fail; a check that does not apply
is skipped where it is flagged, with its reason inline (a ``checkov.io/skipN`` annotation, a
``# checkov:skip=`` comment), and every skip must carry one (README.md, "Operating trustpub").

checkov missing: skipped on a developer's machine, failed in CI (tests/support/ops.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.support.ops import DEPLOY, need_binary, need_module, render

# Checks whose result the scanner looks up online (none of ours): never downloaded.
FLAGS = ("--skip-download", "--compact", "-o", "json")


def _checkov(*args: str) -> dict[str, Any]:
    binary = need_binary("checkov")
    done = subprocess.run(  # noqa: S603  (the venv's checkov)
        [binary, *args, *FLAGS], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.stdout.strip(), done.stderr[-2000:]
    report = json.loads(done.stdout)
    # One framework: one report (a list when checkov ran several).
    (result,) = report if isinstance(report, list) else [report]
    return dict(result)


def _failures(result: dict[str, Any]) -> list[str]:
    return [
        f"{c['check_id']} {c['check_name']!r} on {c['resource']}" for c in result["results"]["failed_checks"]
    ]


def _unexplained_skips(result: dict[str, Any]) -> list[str]:
    skipped = result["results"]["skipped_checks"]
    return [
        f"{c['check_id']} on {c['resource']}"
        for c in skipped
        if len((c.get("check_result", {}).get("suppress_comment") or "").strip()) < 20
    ]


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_checkov_finds_nothing_unexplained_in_the_rendered_overlay(overlay: str, tmp_path: Path) -> None:
    yaml = need_module("yaml")
    docs = render(overlay)
    # One file per object: checkov reads a multi-document file only as far as the first
    # document it cannot take as a Kubernetes object.
    for n, doc in enumerate(docs):
        name = f"{n:03d}-{doc['kind']}-{doc['metadata']['name']}.yaml"
        (tmp_path / name).write_text(yaml.safe_dump(doc))
    result = _checkov("-d", str(tmp_path), "--framework", "kubernetes")
    summary = result["summary"]
    assert summary["parsing_errors"] == 0, summary
    assert summary["passed"] > 100, summary  # it did scan
    assert not _failures(result), _failures(result)
    assert not _unexplained_skips(result), _unexplained_skips(result)
    # Every workload it knows was scanned: trustpub's Deployments and the dev infrastructure.
    scanned = {c["resource"] for c in result["results"]["passed_checks"]}
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            namespace = doc["metadata"]["namespace"]
            assert f"{doc['kind']}.{namespace}.{doc['metadata']['name']}" in scanned


def test_checkov_finds_nothing_unexplained_in_the_dockerfile() -> None:
    result = _checkov("-f", str(DEPLOY / "Dockerfile"), "--framework", "dockerfile")
    assert result["summary"]["passed"] > 10, result["summary"]
    assert not _failures(result), _failures(result)
    assert not _unexplained_skips(result), _unexplained_skips(result)


def test_prod_pulls_every_image_by_digest() -> None:
    for doc in render("prod"):
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            pod = doc["spec"]["template"]["spec"]
            for container in pod["containers"] + pod.get("initContainers", []):
                name, _, digest = container["image"].partition("@")
                assert digest.startswith("sha256:"), container["image"]
                assert len(digest) == len("sha256:") + 64, container["image"]
                assert ":" in name.rsplit("/", 1)[-1], "a tag beside the digest, for people"
