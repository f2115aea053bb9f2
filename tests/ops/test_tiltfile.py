"""The Tiltfile parses as Starlark and, run against stand-ins for Tilt's built-ins that
record each call, builds every service, makes the bus secrets outside the repository and
applies them with the dev overlay, live-updates the code and forwards the ports the README
promises. (Tilt itself needs a cluster; this is what can be checked without one: the commands
it runs at `tilt up` are run here too, into a temporary directory.)"""

from __future__ import annotations

import base64

import pytest
from tests.support.ops import (
    K8S,
    REPO,
    SERVICES,
    TILT_BUS_DIR,
    TILTFILE,
    need_module,
    referenced_by_pods,
    render,
    run_tiltfile,
    tilt_made_objects,
)

from trustpub.messages.endpoints import pair_name, pairs_of


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
        # The bus secrets never go into an image.
        assert not any(path.startswith(".run") for path in kw["only"])
        steps = {step["tilt"]: step for step in kw["live_update"]}
        assert {"fall_back_on", "sync"} <= set(steps)
        syncs = [step["args"] for step in kw["live_update"] if step["tilt"] == "sync"]
        # The dev image installs trustpub editable from /app (deploy/Dockerfile, target dev).
        assert syncs == [["libs", "/app/libs"], ["services", "/app/services"]]


def test_applies_the_dev_overlay_and_forwards_gateway_nats_monitoring_and_prometheus():
    tilt = run_tiltfile()
    assert tilt.called("kustomize") == [(("k8s/overlays/dev",), {})]
    assert (K8S / "overlays" / "dev" / "kustomization.yaml").exists()
    applied = [args[0] for args, _ in tilt.called("k8s_yaml")]
    assert "<kustomize output>" in applied
    resources = {args[0]: kw for args, kw in tilt.called("k8s_resource")}
    assert set(resources) == {*SERVICES, "nats", "postgres", "prometheus"}

    def forwards(name: str) -> set[tuple[int, int]]:
        return {(f["args"][0], f["args"][1]) for f in resources[name].get("port_forwards", [])}

    assert (8000, 8000) in forwards("gateway")  # the API
    assert (8222, 8222) in forwards("nats")  # NATS monitoring
    assert (9090, 9090) in forwards("prometheus")
    assert resources["registry"]["resource_deps"] == ["nats", "postgres"]
    for svc in SERVICES:
        # Every service needs NATS up (with its users) before it can start.
        assert "nats" in resources[svc]["resource_deps"], svc


@pytest.mark.parametrize("name", ["nats", "postgres", "prometheus"])
def test_resources_named_in_the_tiltfile_exist_in_the_dev_overlay(name):
    # Tilt names a resource after its workload; a typo would silently create none.
    text = "".join(p.read_text() for p in (K8S / "infra").rglob("*.yaml"))
    assert f"name: {name}\n" in text


def test_bus_secrets_are_made_at_tilt_up_under_a_git_ignored_directory_and_applied_quietly():
    tilt = run_tiltfile()
    commands = [(args[0], kw) for args, kw in tilt.called("local")]
    assert commands, "the Tiltfile makes the bus secrets"
    (init,) = [c for c, _ in commands if c[1:3] == ["bus", "init"]]
    assert init == [".venv/bin/trustpub", "bus", "init", f"{TILT_BUS_DIR}/secrets"]
    (kube,) = [c for c, _ in commands if c[1:3] == ["bus", "kubernetes"]]
    assert kube[3] == f"{TILT_BUS_DIR}/secrets"
    assert kube[kube.index("--namespace") + 1] == "trustpub-dev"
    assert kube[kube.index("--nats-ca") + 1].startswith(TILT_BUS_DIR + "/")
    # Secrets stay out of Tilt's log, and every command's output that holds objects is applied.
    for _, kw in commands:
        assert kw.get("quiet") is True
    applied = {args[0] for args, _ in tilt.called("k8s_yaml")}
    assert {f"<local #{n}>" for n, (c, _) in enumerate(commands) if c[1:3] != ["bus", "init"]} <= applied
    # The directory is ignored by git (and by the image builds: .dockerignore).
    top = TILT_BUS_DIR.split("/")[0]
    assert {top, top + "/"} & set((REPO / ".gitignore").read_text().split()), f"{top} must be git-ignored"
    assert top in (REPO / ".dockerignore").read_text().split()


def test_what_tilt_makes_is_every_secret_the_dev_overlay_references_and_nothing_else(tmp_path):
    made = tilt_made_objects(tmp_path / "bus")
    overlay = render("dev")
    made_names = {(d["kind"], d["metadata"]["name"]) for d in made}
    overlay_names = {(d["kind"], d["metadata"]["name"]) for d in overlay}
    assert not made_names & overlay_names, "Tilt's objects and the overlay's must not overlap"
    for doc in made:
        assert doc["metadata"]["namespace"] == "trustpub-dev", doc["metadata"]
        assert doc["kind"] in {"Secret", "ConfigMap"}
    # Every Secret and ConfigMap a pod of the overlay references exists in one or the other.
    available = made_names | overlay_names
    referenced = referenced_by_pods(overlay)
    assert referenced <= available, f"referenced but made by nobody: {sorted(referenced - available)}"
    # ... and Tilt makes nothing that nobody uses.
    assert made_names <= referenced, f"made but unused: {sorted(made_names - referenced)}"
    # Each service's Secret holds that service's files, and only those.
    secrets = {d["metadata"]["name"]: d for d in made if d["kind"] == "Secret"}
    for svc in SERVICES:
        files = {f"{svc}.nk", *(f"{pair_name(*p)}.keys" for p in pairs_of(svc))}
        if svc == "minter":
            files.add("minter.jwk")
        assert set(secrets[f"trustpub-bus-{svc}"]["data"]) == files, svc


def test_the_dev_nats_certificate_names_the_service_the_services_connect_to(tmp_path):
    x509 = need_module("cryptography.x509")
    made = tilt_made_objects(tmp_path / "bus")
    (tls,) = [d for d in made if d["metadata"]["name"] == "trustpub-nats-tls"]
    assert tls["type"] == "kubernetes.io/tls"
    cert = x509.load_pem_x509_certificate(base64.b64decode(tls["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    assert {"nats", "nats.trustpub-dev.svc", "nats.trustpub-dev.svc.cluster.local"} <= dns
    (ca_map,) = [d for d in made if d["metadata"]["name"] == "trustpub-nats-ca"]
    ca = x509.load_pem_x509_certificate(ca_map["data"]["ca.pem"].encode())
    cert.verify_directly_issued_by(ca)
    # Running it again (the next `tilt up`) keeps the same secrets and certificate.
    again = {d["metadata"]["name"]: d for d in tilt_made_objects(tmp_path / "bus")}
    assert again["trustpub-nats-tls"] == tls
    assert again["trustpub-nats-ca"] == ca_map
