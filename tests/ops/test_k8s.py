"""The Kubernetes manifests: both overlays render with kustomize and validate, offline,
against the Kubernetes API schemas; then what the deployment promises is checked on the
rendered objects (probes, drain, limits, hardening, secrets, scaling, network policy)."""

from __future__ import annotations

import functools
import subprocess
from typing import Any

import pytest
from tests.ops.ops_support import K8S, OPS_PORTS, SERVICES, kubectl, need_module

# Kubernetes versions the manifests must be valid for: an older supported release and the
# newest that kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", "1.33.0")
OVERLAYS = ("dev", "prod")
DRAIN_GRACE = {"dev": 1, "prod": 5}  # TRUSTPUB_DRAIN_GRACE per overlay
PRESTOP_SECONDS = 5
REQUEST_TIMEOUT = 5


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    yaml = need_module("yaml")
    done = subprocess.run(  # noqa: S603  (a kubectl found by ops_support)
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == kind}


def trustpub_deployments(overlay: str) -> dict[str, dict[str, Any]]:
    return {name: d for name, d in objects(overlay, "Deployment").items() if name in SERVICES}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def config(overlay: str) -> dict[str, str]:
    (cm,) = [c for name, c in objects(overlay, "ConfigMap").items() if name.startswith("trustpub-config-")]
    return dict(cm["data"])


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders_and_validates_against_the_kubernetes_schemas(overlay, version):
    validate = need_module("kubernetes_validate")
    docs = render(overlay)
    assert len(docs) > 15
    for doc in docs:
        # strict: a misspelt or misplaced field is an error, not silently ignored.
        validate.validate(doc, version, strict=True)
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {"trustpub-dev" if overlay == "dev" else "trustpub"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_has_a_deployment_with_probes_on_the_ops_port_and_a_graceful_drain(overlay):
    deployments = trustpub_deployments(overlay)
    assert set(deployments) == set(SERVICES)
    for name, dep in deployments.items():
        spec = dep["spec"]
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["ops"] == OPS_PORTS[name]
        assert env_of(container)["TRUSTPUB_OPS_PORT"] == str(OPS_PORTS[name])
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "ops"}
        # SIGTERM comes after preStop; the whole shutdown must fit in the grace period,
        # or Kubernetes kills requests in flight.
        assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_SECONDS)]
        shutdown = PRESTOP_SECONDS + DRAIN_GRACE[overlay] + REQUEST_TIMEOUT
        assert pod["terminationGracePeriodSeconds"] > shutdown, name
        assert float(config(overlay)["TRUSTPUB_DRAIN_GRACE"]) == DRAIN_GRACE[overlay]
        assert float(config(overlay)["TRUSTPUB_REQUEST_TIMEOUT"]) == REQUEST_TIMEOUT
        # Probes and Prometheus reach the ops port on the pod's address.
        assert config(overlay)["TRUSTPUB_OPS_HOST"] == "0.0.0.0"  # noqa: S104  (inside a pod)
        annotations = spec["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(OPS_PORTS[name])
        assert container["envFrom"][0]["configMapRef"]["name"].startswith("trustpub-config-")
        for key in ("cpu", "memory"):
            assert container["resources"]["requests"][key], name
            assert container["resources"]["limits"][key], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_hardened(overlay):
    for name, dep in trustpub_deployments(overlay).items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (deploy/Dockerfile)
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"] + pod.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"] == {"drop": ["ALL"]}, name
            # Read-only, except where dev lets Tilt's live update write the synced code.
            live_updated = overlay == "dev" and container in pod["containers"]
            assert ctx["readOnlyRootFilesystem"] is not live_updated, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_the_secret_and_configuration_from_config_maps(overlay):
    deployments = trustpub_deployments(overlay)
    registry = deployments["registry"]["spec"]["template"]["spec"]
    minter = deployments["minter"]["spec"]["template"]["spec"]
    db_url = env_of(registry["containers"][0])["TRUSTPUB_DATABASE_URL"]["secretKeyRef"]
    key = env_of(minter["containers"][0])["TRUSTPUB_MINTER_KEY"]["secretKeyRef"]
    assert db_url["key"] == "database-url"
    assert key["key"] == "minter-key"
    # Migrations run before the registry, with the same secret.
    (migrate,) = registry["initContainers"]
    assert migrate["command"] == ["trustpub", "migrate"]
    assert env_of(migrate)["TRUSTPUB_DATABASE_URL"]["secretKeyRef"] == db_url
    secrets = objects(overlay, "Secret")
    if overlay == "dev":
        assert db_url["name"] in secrets  # generated with development values
    else:
        # Production's Secret is created out of band; the overlay must not ship one.
        assert db_url["name"] == key["name"] == "trustpub-secrets"
        assert "trustpub-secrets" not in secrets
    # No secret value in any ConfigMap or plain env value.
    for dep in deployments.values():
        for container in dep["spec"]["template"]["spec"]["containers"]:
            plain = {k: v for k, v in env_of(container).items() if isinstance(v, str)}
            assert not {"TRUSTPUB_DATABASE_URL", "TRUSTPUB_MINTER_KEY"} & set(plain)
    assert not {"TRUSTPUB_DATABASE_URL", "TRUSTPUB_MINTER_KEY"} & set(config(overlay))
    for svc in ("jwks", "verifier"):
        pod = deployments[svc]["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert env_of(pod["containers"][0])["TRUSTPUB_ISSUERS_FILE"] == mounts["issuers"] + "/issuers.toml"
        (volume,) = [v for v in pod["volumes"] if v["name"] == "issuers"]
        assert volume["configMap"]["name"].startswith("trustpub-issuers-")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_has_a_service_and_the_verifier_scales_on_cpu(overlay):
    trustpub_services = {
        n
        for n, s in objects(overlay, "Service").items()
        if s["metadata"]["labels"].get("app.kubernetes.io/part-of") == "trustpub"
    }
    assert trustpub_services == {"gateway"}
    (hpa,) = objects(overlay, "HorizontalPodAutoscaler").values()
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "verifier",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] >= (1 if overlay == "dev" else 2)
    # The HPA owns the verifier's replica count.
    assert "replicas" not in trustpub_deployments(overlay)["verifier"]["spec"]
    pdbs = objects(overlay, "PodDisruptionBudget")
    assert set(pdbs) == set(SERVICES)
    for name, pdb in pdbs.items():
        assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def _ingress_ports_open_to_everyone(policies: list[dict[str, Any]], labels: dict[str, str]) -> set[Any]:
    ports: set[Any] = set()
    for policy in policies:
        if _selects(policy, labels) and "Ingress" in policy["spec"]["policyTypes"]:
            for rule in policy["spec"].get("ingress", []):
                if not rule.get("from"):
                    ports |= {p["port"] for p in rule.get("ports", [])}
    return ports


def _egress_ports(policies: list[dict[str, Any]], labels: dict[str, str]) -> set[Any]:
    ports: set[Any] = set()
    for policy in policies:
        if _selects(policy, labels) and "Egress" in policy["spec"]["policyTypes"]:
            for rule in policy["spec"].get("egress", []):
                ports |= {p["port"] for p in rule.get("ports", [])}
    return ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_expose_only_the_gateway_and_let_only_the_registry_reach_postgres(overlay):
    policies = list(objects(overlay, "NetworkPolicy").values())
    for name, dep in trustpub_deployments(overlay).items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "trustpub"
        # Every trustpub pod is under a default deny, both ways.
        assert any(
            _selects(p, labels)
            and p["spec"]["policyTypes"] == ["Ingress", "Egress"]
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
            for p in policies
        )
        open_ports = _ingress_ports_open_to_everyone(policies, labels)
        assert open_ports == ({"http"} if name == "gateway" else set()), name
        egress = _egress_ports(policies, labels)
        assert (5432 in egress) is (name == "registry"), name
        assert (443 in egress) is (name == "jwks"), name
        assert 4222 in egress
    if overlay == "dev":
        (pg,) = [p for p in policies if _selects(p, {"app.kubernetes.io/name": "postgres"})]
        (rule,) = pg["spec"]["ingress"]
        assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "registry"}}}]


def test_dev_overlay_brings_nats_postgres_and_prometheus_with_the_rules():
    statefulsets = objects("dev", "StatefulSet")
    assert {"nats", "postgres"} <= set(statefulsets)
    nats_args = statefulsets["nats"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--jetstream" in nats_args
    assert "prometheus" in objects("dev", "Deployment")
    rules = [c for n, c in objects("dev", "ConfigMap").items() if n.startswith("trustpub-prometheus-rules-")]
    (cm,) = rules
    assert cm["data"]["rules.yml"] == (K8S.parent / "deploy" / "prometheus" / "rules.yml").read_text()
    assert config("dev")["TRUSTPUB_NATS_URL"] == "nats://nats:4222"
    # Production brings its own infrastructure.
    assert not objects("prod", "StatefulSet")
    assert "prometheus" not in objects("prod", "Deployment")
