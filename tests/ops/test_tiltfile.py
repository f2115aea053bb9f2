"""The Tiltfile parses as Starlark and, run against stand-ins for Tilt's built-ins that
record each call, builds every service, applies the dev overlay, live-updates the code and
forwards the ports the README promises. (Tilt itself needs a cluster; this is what can be
checked without one.)"""

from __future__ import annotations

from typing import Any

import pytest
from tests.ops.ops_support import K8S, REPO, SERVICES, need_module

TILTFILE = REPO / "Tiltfile"


class Tilt:
    """Records the Tiltfile's calls to Tilt's API."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def builtin(self, name: str, result: Any = None) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return result if result is not None else {"tilt": name, "args": list(args), **kwargs}

        call.__name__ = name
        return call

    def called(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(a, k) for n, a, k in self.calls if n == name]


BUILTINS = (
    "allow_k8s_contexts",
    "k8s_yaml",
    "k8s_resource",
    "port_forward",
    "sync",
    "run",
    "fall_back_on",
    "local_resource",
    "docker_build",
)


def run_tiltfile() -> Tilt:
    starlark = need_module("starlark")
    source = TILTFILE.read_text()
    ast = starlark.parse("Tiltfile", source, starlark.Dialect.extended())
    tilt = Tilt()
    module = starlark.Module()
    for name in BUILTINS:
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


def test_tiltfile_parses():
    starlark = need_module("starlark")
    starlark.parse("Tiltfile", TILTFILE.read_text(), starlark.Dialect.extended())


def test_builds_every_service_from_the_one_dockerfile_with_live_update():
    tilt = run_tiltfile()
    builds = tilt.called("docker_build_with_restart")
    assert [args[0] for args, _ in builds] == [f"trustpub-{svc}" for svc in SERVICES]
    for (ref, context), kw in builds:
        svc = ref.removeprefix("trustpub-")
        assert context == "."
        assert kw["dockerfile"] == "deploy/Dockerfile"
        assert (REPO / kw["dockerfile"]).exists()
        assert kw["target"] == "dev"
        assert kw["build_args"] == {"SERVICE": svc}
        assert kw["entrypoint"] == ["python", "-m", f"trustpub.{svc}"]
        for path in kw["only"]:
            assert (REPO / path).exists(), path
        steps = {step["tilt"]: step for step in kw["live_update"]}
        assert {"fall_back_on", "sync"} <= set(steps)
        syncs = [step["args"] for step in kw["live_update"] if step["tilt"] == "sync"]
        # The dev image installs trustpub editable from /app (deploy/Dockerfile, target dev).
        assert syncs == [["libs", "/app/libs"], ["services", "/app/services"]]


def test_applies_the_dev_overlay_and_forwards_gateway_nats_monitoring_and_prometheus():
    tilt = run_tiltfile()
    assert tilt.called("kustomize") == [(("k8s/overlays/dev",), {})]
    assert (K8S / "overlays" / "dev" / "kustomization.yaml").exists()
    assert tilt.called("k8s_yaml") == [(("<kustomize output>",), {})]
    resources = {args[0]: kw for args, kw in tilt.called("k8s_resource")}
    assert set(resources) == {*SERVICES, "nats", "postgres", "prometheus"}

    def forwards(name: str) -> set[tuple[int, int]]:
        return {(f["args"][0], f["args"][1]) for f in resources[name].get("port_forwards", [])}

    assert (8000, 8000) in forwards("gateway")  # the API
    assert (8222, 8222) in forwards("nats")  # NATS monitoring
    assert (9090, 9090) in forwards("prometheus")
    assert resources["registry"]["resource_deps"] == ["nats", "postgres"]


@pytest.mark.parametrize("name", ["nats", "postgres", "prometheus"])
def test_resources_named_in_the_tiltfile_exist_in_the_dev_overlay(name):
    # Tilt names a resource after its workload; a typo would silently create none.
    text = "".join(p.read_text() for p in (K8S / "infra").rglob("*.yaml"))
    assert f"name: {name}\n" in text
