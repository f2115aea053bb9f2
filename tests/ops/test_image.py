"""deploy/Dockerfile, read by the official parser, and the wheel it installs.

No container engine runs here, so the image itself is not built: the Dockerfile is parsed
(BuildKit's own parser, through the ``dockerfile`` package) and checked for what the
manifests rely on, and the wheel is built from exactly the files the Dockerfile copies.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from tests.support.ops import REPO, SERVICES, need_module

DOCKERFILE = REPO / "deploy" / "Dockerfile"
# What the build stages COPY from the context (the Tiltfile's `only` list is the same).
CONTEXT = ("pyproject.toml", "constraints.txt", "README.md", "libs", "services")
SOURCE_ROOTS = ("libs", "services")
LIBRARIES = ("messages", "runtime", "providers")


def stages() -> dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]]:
    parser = need_module("dockerfile")
    out: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]] = {}
    current = "(global)"
    for cmd in parser.parse_file(str(DOCKERFILE)):
        if cmd.cmd == "FROM":
            current = cmd.value[-1]
        out.setdefault(current, []).append((cmd.cmd, tuple(cmd.flags), tuple(cmd.value)))
    return out


def instructions(
    stage: list[tuple[str, tuple[str, ...], tuple[str, ...]]], name: str
) -> list[tuple[str, ...]]:
    return [value for cmd, _, value in stage if cmd == name]


def test_stages_and_default_target():
    found = stages()
    assert list(found) == ["(global)", "base", "deps", "build", "dev", "runtime"]
    # `docker build` without --target builds the last stage: the production image.
    assert instructions(found["runtime"], "FROM") == [("base", "AS", "runtime")]


@pytest.mark.parametrize("target", ["dev", "runtime"])
def test_runs_the_service_named_by_the_build_argument_as_non_root(target):
    stage = stages()[target]
    assert ("SERVICE",) in instructions(stage, "ARG")
    assert ("TRUSTPUB_SERVICE", "${SERVICE}") in instructions(stage, "ENV")
    # A numeric user, so that Kubernetes' runAsNonRoot can check it; the same id as the
    # manifests' runAsUser.
    (user,) = instructions(stage, "USER")
    assert user == ("${UID}:${UID}",)
    global_args = instructions(stages()["(global)"], "ARG")
    assert ("UID=10001",) in global_args
    # Exec form through `sh -c exec`: the service replaces the shell and gets SIGTERM itself.
    (entrypoint,) = instructions(stage, "ENTRYPOINT")
    assert entrypoint[:2] == ("/bin/sh", "-c")
    assert entrypoint[2].startswith('exec python -m "trustpub.${TRUSTPUB_SERVICE}"')
    # Refuses to build without SERVICE rather than making an image that cannot start.
    assert any('test -n "${SERVICE}"' in run[0] for run in instructions(stage, "RUN"))


def test_dependencies_come_from_the_constraints_file_only():
    found = stages()
    (deps_run,) = instructions(found["deps"], "RUN")
    assert "--constraint constraints.txt" in deps_run[0]
    # Runtime dependencies only: no extras (dev servers, test and ops tools) in the image.
    assert '["project"]["dependencies"]' in deps_run[0]
    for stage in ("build", "dev"):
        for (run,) in instructions(found[stage], "RUN"):
            if "pip install" in run:
                assert "--no-deps" in run
                assert "--constraint constraints.txt" in run
    # The production image gets the built venv and nothing of the source tree.
    assert instructions(found["runtime"], "COPY") == [("/opt/trustpub", "/opt/trustpub")]
    copied = {
        v
        for value in instructions(found["build"], "COPY") + instructions(found["deps"], "COPY")
        for v in value[:-1]
    }
    assert copied == set(CONTEXT)


def test_every_runtime_dependency_is_pinned_in_the_constraints():
    """The deps stage installs pyproject's dependencies at the versions of constraints.txt; one
    missing there (nkeys, say, for the bus's nkey authentication) would float."""
    pinned = {
        re.sub(r"[-_.]+", "-", line.split("==", 1)[0]).lower()
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    }
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {
        re.sub(r"[-_.]+", "-", re.split(r"[\s;<>=!~\[]", dep, maxsplit=1)[0]).lower() for dep in dependencies
    }
    assert "nkeys" in names
    assert names <= pinned, sorted(names - pinned)


def test_base_image_is_slim_and_pinned_to_the_supported_python():
    (arg,) = [a for a in instructions(stages()["(global)"], "ARG") if a[0].startswith("PYTHON_IMAGE=")]
    image = arg[0].split("=", 1)[1]
    assert image.startswith("python:3.11-slim")
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"


@pytest.mark.slow
def test_wheel_from_the_docker_context_holds_every_package_and_the_migrations(tmp_path):
    """What the build stage runs (`pip wheel --no-deps .`) on only what it copies."""
    context = tmp_path / "context"
    context.mkdir()
    for name in CONTEXT:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, context / name)
    wheels = tmp_path / "wheels"
    done = subprocess.run(  # noqa: S603  (this interpreter's pip)
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(wheels), str(context)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = wheels.glob("trustpub-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    # Every module and migration of the two source roots, found as setuptools finds them (no
    # list to forget a package in), and nothing else: the dev stack (deploy/devstack) stays out.
    expected = {
        p.relative_to(REPO / root).as_posix()
        for root in SOURCE_ROOTS
        for p in (REPO / root / "trustpub").rglob("*")
        if p.suffix in {".py", ".sql"} and "__pycache__" not in p.parts
    }
    shipped = {n for n in names if n.startswith("trustpub/")}
    assert expected <= shipped, f"missing from the wheel: {sorted(expected - shipped)}"
    assert shipped <= expected, f"not from libs/ or services/: {sorted(shipped - expected)}"
    packages = {n.rsplit("/", 1)[0].replace("/", ".") for n in shipped if n.endswith("/__init__.py")}
    assert {f"trustpub.{name}" for name in (*LIBRARIES, *SERVICES)} <= packages
    assert not [n for n in names if "devstack" in n]
    sql = {p.name for p in (REPO / "services/trustpub/registry/sql").glob("*.sql")}
    assert sql, "the registry has migrations"
    assert {f"trustpub/registry/sql/{n}" for n in sql} <= names
    for svc in SERVICES:
        assert f"trustpub/{svc}/__main__.py" in names  # python -m trustpub.<svc>
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "trustpub = trustpub.registry.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_context_ignores_local_state():
    """The build context leaves out the venv, local servers' data and caches."""
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".run", ".git"} <= ignored
    for name in CONTEXT:
        assert name not in ignored
        assert (REPO / name).exists(), Path(name)
