"""The Kubernetes manifests: both overlays render with kustomize and validate, offline,
against the Kubernetes API schemas; then what the deployment promises is checked on the
rendered objects (probes, drain, limits, hardening, secrets, scaling, network policy, the bus:
each service's own Secret, TLS to NATS, the NATS the dev overlay brings), and the dev NATS is
started from the rendered configuration and joined with each service's rendered settings."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import posixpath
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from tests.support.ops import (
    K8S,
    OPS_PORTS,
    REPO,
    SERVICES,
    need_module,
    referenced_by_pods,
    render,
    tilt_made_objects,
)
from tests.support.waiting import WAIT_S, until

from trustpub.messages.endpoints import pair_name, pairs_of

# Kubernetes versions the manifests must be valid for: an older supported release and the
# newest that kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", "1.33.0")
OVERLAYS = ("dev", "prod")
DRAIN_GRACE = {"dev": 1, "prod": 5}  # TRUSTPUB_DRAIN_GRACE per overlay
PRESTOP_SECONDS = 5
REQUEST_TIMEOUT = 5
# What `trustpub bus kubernetes` prints and the manifests reference by name.
BUS_SECRET = "trustpub-bus-{}"
NATS_CA = "trustpub-nats-ca"
NATS_AUTH = "trustpub-nats-auth"
NATS_TLS = "trustpub-nats-tls"
MINTER_KEY_IDS = "trustpub-minter-key-ids"

Docs = dict[tuple[str, str], dict[str, Any]]  # (kind, name) -> object


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == kind}


def trustpub_deployments(overlay: str) -> dict[str, dict[str, Any]]:
    return {name: d for name, d in objects(overlay, "Deployment").items() if name in SERVICES}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def config(overlay: str) -> dict[str, str]:
    (cm,) = [c for name, c in objects(overlay, "ConfigMap").items() if name.startswith("trustpub-config-")]
    return dict(cm["data"])


def bus_files(service: str) -> set[str]:
    """The files of ``service``'s bus Secret: its nkey seed, its seal key rings, the minter key."""
    files = {f"{service}.nk", *(f"{pair_name(*p)}.keys" for p in pairs_of(service))}
    return files | {"minter.jwk"} if service == "minter" else files


def operator_objects(tmp: Path, namespace: str) -> tuple[dict[str, Any], ...]:
    """What docs/bus.md has an operator run: `trustpub bus init`, then `trustpub bus
    kubernetes` with the CA of their NATS's certificate."""
    yaml = need_module("yaml")
    from deploy.devstack.bus import DevBus  # noqa: PLC0415  (a CA to name)

    ca = DevBus(tmp / "nats").ensure().ca_cert
    trustpub = str(Path(sys.prefix) / "bin" / "trustpub")
    for argv in (
        [trustpub, "bus", "init", str(tmp / "secrets")],
        [trustpub, "bus", "kubernetes", str(tmp / "secrets"), "--namespace", namespace, "--nats-ca", str(ca)],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
        assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


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


def _database_secret(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The Secret and key whose file ``container`` reads the database URL from."""
    env = env_of(container)
    assert "TRUSTPUB_DATABASE_URL" not in env
    path = env["TRUSTPUB_DATABASE_URL_FILE"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[posixpath.dirname(path)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (item,) = volume["secret"]["items"]  # that key alone
    assert item["path"] == posixpath.basename(path)
    assert volume["secret"]["defaultMode"] == 0o440
    return {"name": volume["secret"]["secretName"], "key": item["key"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_secrets_and_configuration_from_config_maps(overlay):
    deployments = trustpub_deployments(overlay)
    registry = deployments["registry"]["spec"]["template"]["spec"]
    minter = deployments["minter"]["spec"]["template"]["spec"]
    # The database URL is a file of its Secret, not an environment variable (checkov CKV_K8S_35).
    db_url = _database_secret(registry, registry["containers"][0])
    assert db_url["key"] == "database-url"
    # The minter's key is a file of its own bus Secret; TRUSTPUB_MINTER_KEY would win over it.
    minter_env = env_of(minter["containers"][0])
    assert "TRUSTPUB_MINTER_KEY" not in minter_env
    bus_dir = minter_env["TRUSTPUB_BUS_SECRETS_DIR"]
    assert minter_env["TRUSTPUB_MINTER_KEY_FILE"] == bus_dir + "/minter.jwk"
    # Migrations run before the registry, with the same secret.
    (migrate,) = registry["initContainers"]
    assert migrate["command"] == ["trustpub", "migrate"]
    assert _database_secret(registry, migrate) == db_url
    secrets = objects(overlay, "Secret")
    if overlay == "dev":
        assert db_url["name"] in secrets  # generated with development values
        assert set(secrets[db_url["name"]]["data"]) == {"database-url"}
    else:
        # Production's Secret is created out of band; the overlay must not ship one.
        assert db_url["name"] == "trustpub-secrets"
        assert "trustpub-secrets" not in secrets
    # The bus secrets are in no overlay: made at `tilt up`, or by the operator.
    assert not [name for name in secrets if name.startswith(("trustpub-bus-", NATS_AUTH, NATS_TLS))]
    # No secret value in any ConfigMap or plain env value.
    for dep in deployments.values():
        for container in dep["spec"]["template"]["spec"]["containers"]:
            plain = {k: v for k, v in env_of(container).items() if isinstance(v, str)}
            assert not {"TRUSTPUB_DATABASE_URL", "TRUSTPUB_MINTER_KEY"} & set(plain)
            assert "TRUSTPUB_MINTER_KEY" not in env_of(container)
    assert not {"TRUSTPUB_DATABASE_URL", "TRUSTPUB_MINTER_KEY"} & set(config(overlay))
    # The registry reads the issuers too: a refused exchange's audit may name only these.
    for svc in ("jwks", "verifier", "registry"):
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
    # The public entries: the gateway and the upload gate; and the admin API's, inside only.
    assert trustpub_services == {"gateway", "gate", "gateway-admin"}
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
        # Behind prod's Ingress, the gateway admits the ingress controller only (below).
        # The upload gate takes uploads from anyone (it checks every token), in both overlays.
        public = (name == "gateway" and overlay == "dev") or name == "gate"
        assert open_ports == ({"http"} if public else set()), name
        egress = _egress_ports(policies, labels)
        assert (5432 in egress) is (name == "registry"), name
        # jwks fetches issuers' keys; the gate reaches the index.
        assert (443 in egress) is (name in {"jwks", "gate"}), name
        assert 4222 in egress
    # The admin port: only the labelled admin clients, and nothing else on it.
    gateway = {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/part-of": "trustpub"}
    admin_rules = [
        r
        for p in policies
        if _selects(p, gateway) and "Ingress" in p["spec"]["policyTypes"]
        for r in p["spec"].get("ingress", [])
        if {"port": "admin", "protocol": "TCP"} in r.get("ports", [])
    ]
    assert admin_rules == [
        {
            "from": [{"podSelector": {"matchLabels": {"trustpub.io/admin-client": "true"}}}],
            "ports": [{"port": "admin", "protocol": "TCP"}],
        }
    ]
    # No Ingress routes to it: the public entry is the gateway's HTTP port alone.
    backends = {
        (path["backend"]["service"]["name"], path["backend"]["service"]["port"]["name"])
        for ingress in objects(overlay, "Ingress").values()
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert backends <= {("gateway", "http")}
    assert backends or overlay == "dev"
    if overlay == "dev":
        (pg,) = [p for p in policies if _selects(p, {"app.kubernetes.io/name": "postgres"})]
        (rule,) = pg["spec"]["ingress"]
        assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "registry"}}}]


def test_dev_overlay_brings_nats_postgres_and_prometheus_with_the_rules():
    statefulsets = objects("dev", "StatefulSet")
    assert {"nats", "postgres"} <= set(statefulsets)
    # JetStream is on in the server's configuration (see the NATS tests below).
    assert re.search(r"^jetstream\s*\{", dev_nats()["config"], re.MULTILINE)
    assert "prometheus" in objects("dev", "Deployment")
    rules = [c for n, c in objects("dev", "ConfigMap").items() if n.startswith("trustpub-prometheus-rules-")]
    (cm,) = rules
    assert cm["data"]["rules.yml"] == (K8S.parent / "deploy" / "prometheus" / "rules.yml").read_text()
    # The in-cluster NATS Service, over TLS.
    assert config("dev")["TRUSTPUB_NATS_URL"] == "tls://nats:4222"
    # Production brings its own infrastructure.
    assert not objects("prod", "StatefulSet")
    assert "prometheus" not in objects("prod", "Deployment")


# --- the bus: each service's own Secret, TLS to NATS, the NATS the dev overlay brings ------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_mounts_exactly_its_own_bus_secret_and_the_nats_ca(overlay):
    for name, dep in trustpub_deployments(overlay).items():
        pod = dep["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert not [v for v in volumes.values() if "projected" in v], name
        # Its own bus Secret is the only Secret it mounts: nothing of another service's (the
        # registry also mounts the database URL, checked above).
        secret_volumes = {
            n: v["secret"]
            for n, v in volumes.items()
            if "secret" in v and not v["secret"]["secretName"].startswith("trustpub-secrets")
        }
        others = {v["secret"]["secretName"] for v in volumes.values() if "secret" in v} - {
            s["secretName"] for s in secret_volumes.values()
        }
        assert not others or name in {"registry", "gate"}, name  # the database URL, the index's password
        ((bus_volume, secret),) = secret_volumes.items()
        assert secret["secretName"] == BUS_SECRET.format(name), name
        assert secret["defaultMode"] == 0o440, name
        (container,) = pod["containers"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts[bus_volume]["readOnly"] is True, name
        env = env_of(container)
        assert env["TRUSTPUB_BUS_SECRETS_DIR"] == mounts[bus_volume]["mountPath"], name
        # No other identity than the one in the directory.
        assert not {"TRUSTPUB_NATS_NKEY_SEED_FILE", "TRUSTPUB_NATS_CREDS_FILE"} & set(env), name
        # TLS to NATS, verified against the CA of the ConfigMap.
        (ca_volume,) = [n for n, v in volumes.items() if v.get("configMap", {}).get("name") == NATS_CA]
        assert mounts[ca_volume]["readOnly"] is True
        assert env["TRUSTPUB_NATS_TLS_CA"] == mounts[ca_volume]["mountPath"] + "/ca.pem", name
        # The init container (migrations) needs the database only, not the bus.
        for init in pod.get("initContainers", []):
            assert bus_volume not in {m["name"] for m in init.get("volumeMounts", [])}
            assert not [k for k in env_of(init) if k.startswith(("TRUSTPUB_BUS", "TRUSTPUB_NATS"))]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_trusts_the_minter_key_ids_and_shares_the_token_settings_with_the_minter(overlay):
    deployments = trustpub_deployments(overlay)
    gateway = env_of(deployments["gateway"]["spec"]["template"]["spec"]["containers"][0])
    assert gateway["TRUSTPUB_MINTER_KEY_IDS"] == {
        "configMapKeyRef": {"name": MINTER_KEY_IDS, "key": "TRUSTPUB_MINTER_KEY_IDS"}
    }
    # What upload tokens say comes from the shared ConfigMap only, so the two cannot differ.
    minter = env_of(deployments["minter"]["spec"]["template"]["spec"]["containers"][0])
    token_settings = {"TRUSTPUB_TOKEN_PREFIX", "TRUSTPUB_TOKEN_ISSUER", "TRUSTPUB_TOKEN_AUDIENCE"}
    assert token_settings <= set(config(overlay))
    assert not token_settings & (set(gateway) | set(minter))


def _peers(rule: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return list(rule.get(key, []))


def _named_destinations(
    policy: dict[str, Any], nats_peer: dict[str, Any], dns_peer: dict[str, Any]
) -> set[str]:
    """What of NATS and DNS ``policy`` opens, each checked to name its pods."""
    seen = set()
    for rule in policy["spec"].get("egress", []):
        ports = {p["port"] for p in rule.get("ports", [])}
        if 4222 in ports:
            assert (ports, _peers(rule, "to")) == ({4222}, [nats_peer]), policy["metadata"]["name"]
            seen.add("nats")
        if 53 in ports:
            assert (ports, _peers(rule, "to")) == ({53}, [dns_peer]), policy["metadata"]["name"]
            seen.add("dns")
    return seen


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_dns_and_prometheus_are_named_not_any_address_on_their_port(overlay):
    # Egress to NATS and DNS goes to their pods only, not to any address on 4222 or 53 (a way
    # out for a compromised pod); the ops ports admit Prometheus of a labelled namespace only.
    labels_of = [d["spec"]["template"]["metadata"]["labels"] for d in trustpub_deployments(overlay).values()]
    policies = [
        p for p in objects(overlay, "NetworkPolicy").values() if any(_selects(p, lab) for lab in labels_of)
    ]
    nats_peer = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nats"}}}
    if overlay == "prod":  # the operator's NATS, in namespace nats (TRUSTPUB_NATS_URL)
        nats_peer = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nats"}}
        } | nats_peer
    dns_peer = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
    seen = set()
    for policy in policies:
        seen |= _named_destinations(policy, nats_peer, dns_peer)
        ops_rules = [
            r for r in policy["spec"].get("ingress", []) if "ops" in {p["port"] for p in r.get("ports", [])}
        ]
        for peer in (peer for rule in ops_rules for peer in _peers(rule, "from")):
            assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
            if overlay == "prod":
                assert peer["namespaceSelector"]["matchLabels"], "any namespace's Prometheus"
            else:
                assert "namespaceSelector" not in peer  # k8s/infra's, in this namespace
            seen.add("ops")
    assert seen == {"nats", "dns", "ops"}


def test_prod_reads_the_client_from_the_ingress_controller_alone():
    # Behind the Ingress every peer is the controller: without trusted proxies every client
    # would share its rate-limit bucket (README.md, "Limits and hostile input").
    from trustpub.gateway.config import Settings  # noqa: PLC0415
    from trustpub.runtime.config import load  # noqa: PLC0415

    proxies = config("prod")["TRUSTPUB_TRUSTED_PROXIES"]
    settings = load(Settings, {"TRUSTPUB_TRUSTED_PROXIES": proxies, "TRUSTPUB_MINTER_KEY_IDS": "k"})
    assert settings.trusted_proxies
    assert "TRUSTPUB_TRUSTED_PROXIES" not in config("dev")  # dev: no Ingress, clients connect directly
    # One value, set once, explained where it is set.
    overlay = (K8S / "overlays" / "prod" / "kustomization.yaml").read_text()
    assert overlay.count("TRUSTPUB_TRUSTED_PROXIES=") == 1
    assert overlay.count(proxies) == 1
    # Only the controller's namespace reaches the gateway's HTTP port, so no other pod in that
    # range can speak for a client.
    policies = [
        p
        for p in objects("prod", "NetworkPolicy").values()
        if _selects(p, {"app.kubernetes.io/name": "gateway"}) and "Ingress" in p["spec"]["policyTypes"]
    ]
    http_rules = [
        r
        for p in policies
        for r in p["spec"].get("ingress", [])
        if {"port": "http", "protocol": "TCP"} in r.get("ports", [])
    ]
    (rule,) = http_rules
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    assert "`TRUSTPUB_TRUSTED_PROXIES`" in (REPO / "README.md").read_text()


def test_each_overlay_mints_tokens_of_its_own_issuer():
    # An index that trusts two deployments tells their tokens apart by iss (README.md,
    # "Configuration"): neither overlay keeps the default, and they differ.
    from trustpub.minter.config import Settings  # noqa: PLC0415

    issuers = {overlay: config(overlay)["TRUSTPUB_TOKEN_ISSUER"] for overlay in OVERLAYS}
    assert Settings.token_issuer not in issuers.values()
    assert len(set(issuers.values())) == len(OVERLAYS)
    assert issuers["prod"].startswith("https://")
    readme = (REPO / "README.md").read_text()
    assert "`TRUSTPUB_TOKEN_ISSUER`" in readme
    assert "`TRUSTPUB_TOKEN_AUDIENCE`" in readme


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_reach_nats_over_tls_first_and_never_with_a_password_in_a_config_map(overlay):
    settings = config(overlay)
    url = urlsplit(settings["TRUSTPUB_NATS_URL"])
    # tls:// says what the services do anyway (they refuse to connect without TLS).
    assert url.scheme == "tls", settings["TRUSTPUB_NATS_URL"]
    assert url.username is None
    assert url.password is None
    falsy = {"0", "false", "no", "off", ""}
    for name, dep in trustpub_deployments(overlay).items():
        env = {**settings, **env_of(dep["spec"]["template"]["spec"]["containers"][0])}
        assert str(env.get("TRUSTPUB_NATS_PLAINTEXT", "false")).lower() in falsy, name
        assert str(env.get("TRUSTPUB_NATS_TLS_HANDSHAKE_FIRST", "true")).lower() not in falsy, name
        assert "TRUSTPUB_NATS_URL" not in env_of(dep["spec"]["template"]["spec"]["containers"][0]), name


def test_prod_references_only_what_its_comments_and_docs_bus_md_tell_the_operator_to_create(tmp_path):
    overlay = render("prod")
    made = operator_objects(tmp_path, "trustpub")
    shipped = {(d["kind"], d["metadata"]["name"]) for d in overlay}
    created = {(d["kind"], d["metadata"]["name"]) for d in made} | {("Secret", "trustpub-secrets")}
    missing = referenced_by_pods(overlay) - shipped
    assert missing <= created, f"referenced, created by nobody: {sorted(missing - created)}"
    assert {(d["kind"], d["metadata"]["name"]) for d in made if d["kind"] == "Secret"} >= {
        ("Secret", BUS_SECRET.format(svc)) for svc in SERVICES
    }
    guide = (REPO / "docs" / "bus.md").read_text()
    comments = (K8S / "overlays" / "prod" / "kustomization.yaml").read_text()
    for _, name in sorted(missing):
        shown = "trustpub-bus-<service>" if name.startswith("trustpub-bus-") else name
        assert shown in comments, name
        assert shown in guide, name
    for command in ("trustpub bus init", "trustpub bus authorization", "trustpub bus kubernetes"):
        assert command in comments
        assert command in guide
    # What the operator stores: each bus Secret holds its service's files only.
    for doc in made:
        if doc["metadata"]["name"].startswith("trustpub-bus-"):
            service = doc["metadata"]["name"].removeprefix("trustpub-bus-")
            assert set(doc["data"]) == bus_files(service)


# Secret material, wherever it might leak: PEM private keys, nkey seeds (S + type), private
# JWK members, seal key ring lines (<8 hex digits> <32 bytes base64url>).
_PRIVATE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|\bS[UNAOCX][A-Z2-7]{56}\b"
    r'|"(?:d|p|q|dp|dq|qi|k)"\s*:\s*"[A-Za-z0-9_-]{16,}'
    r"|^[0-9a-f]{8} [A-Za-z0-9_-]{43}\s*$",
    re.MULTILINE,
)


# Keys of a Secret that hold public material: a TLS Secret's certificate.
_PUBLIC_KEYS = {"tls.crt", "ca.crt"}


def _secret_strings(docs: tuple[dict[str, Any], ...]) -> set[str]:
    """Every value of every Secret, and each line and word of it, long enough to be secret
    (PEM armour and comments aside)."""
    values: list[str] = []
    for doc in docs:
        if doc["kind"] != "Secret":
            continue
        data = {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
        data |= doc.get("stringData", {})
        values += [v for k, v in data.items() if k not in _PUBLIC_KEYS]
    found: set[str] = set()
    for value in values:
        for part in [value, *value.splitlines(), *value.split()]:
            if len(part.strip()) >= 16 and not part.strip().startswith(("#", "-----")):
                found.add(part.strip())
    return found


def test_no_secret_content_is_in_a_config_map_or_a_plain_env_value(tmp_path):
    made = tilt_made_objects(tmp_path / "tilt")
    for overlay, extra in (("dev", made), ("prod", operator_objects(tmp_path / "op", "trustpub"))):
        docs = render(overlay) + extra
        secrets = _secret_strings(docs)
        assert secrets, "the secrets to look for"
        plain: list[str] = []
        for doc in docs:
            if doc["kind"] == "ConfigMap":
                plain += [str(v) for v in doc.get("data", {}).values()]
            if doc["kind"] in {"Deployment", "StatefulSet"}:
                pod = doc["spec"]["template"]["spec"]
                for container in pod["containers"] + pod.get("initContainers", []):
                    plain += [str(e["value"]) for e in container.get("env", []) if "value" in e]
                    plain += [" ".join(container.get("args", [])), " ".join(container.get("command", []))]
        for text in plain:
            assert not _PRIVATE.search(text), text[:200]
            assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), "a password in a URL"
            for secret in secrets:
                assert secret not in text, f"{overlay}: a Secret's content in {text[:80]!r}"
    # The minter key ids are public (thumbprints): the ConfigMap holds them and nothing else.
    (ids,) = [d for d in made if d["metadata"]["name"] == MINTER_KEY_IDS]
    assert ids["kind"] == "ConfigMap"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}(,[A-Za-z0-9_-]{43})*", ids["data"]["TRUSTPUB_MINTER_KEY_IDS"])


# Where a private key may be written down: tests (fixtures), and local state nobody commits.
_NOT_SCANNED = {".git", ".venv", ".run", "tests", "node_modules", "build", "dist", "__pycache__"}


def test_no_private_key_is_anywhere_in_the_repository_outside_tests():
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [
            d
            for d in dirs
            if d not in _NOT_SCANNED and not d.endswith((".egg-info", "_cache")) and d != ".run"
        ]
        for file in files:
            path = Path(root) / file
            if path.stat().st_size > 2_000_000:
                continue
            try:
                text = path.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            found += [f"{path.relative_to(REPO)}: {m.group(0)[:40]}" for m in _PRIVATE.finditer(text)]
    assert not found, found


def dev_nats() -> dict[str, Any]:
    """The dev overlay's NATS: its container, volumes by name, mounts by volume name, and the
    configuration it starts with."""
    (sts,) = [s for n, s in objects("dev", "StatefulSet").items() if n == "nats"]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    path = args[args.index("--config") + 1]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    (config_volume,) = [n for n, m in mounts.items() if m["mountPath"] == posixpath.dirname(path)]
    config_maps = objects("dev", "ConfigMap")
    data = config_maps[volumes[config_volume]["configMap"]["name"]]["data"]
    return {
        "sts": sts,
        "container": container,
        "volumes": volumes,
        "mounts": mounts,
        "config_path": path,
        "config": data[posixpath.basename(path)],
    }


def _mount_of_secret(nats: dict[str, Any], secret: str) -> str:
    (name,) = [n for n, v in nats["volumes"].items() if v.get("secret", {}).get("secretName") == secret]
    mount = nats["mounts"][name]
    assert mount["readOnly"] is True
    return str(mount["mountPath"])


def _uncommented(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_dev_nats_speaks_tls_first_has_jetstream_and_knows_only_the_generated_users():
    nats = dev_nats()
    conf = _uncommented(nats["config"])
    # Nothing on the command line weakens or bypasses the configuration.
    assert nats["container"]["args"] == ["--config", nats["config_path"]]
    # TLS on the client port, from the first byte, with the certificate of its Secret.
    (tls,) = re.findall(r"^tls\s*\{([^}]*)\}", conf, re.MULTILINE)
    assert re.search(r"^\s*handshake_first:\s*true\s*$", tls, re.MULTILINE)
    tls_dir = _mount_of_secret(nats, NATS_TLS)
    assert re.search(rf"^\s*cert_file:\s*\"?{tls_dir}/tls.crt\"?\s*$", tls, re.MULTILINE)
    assert re.search(rf"^\s*key_file:\s*\"?{tls_dir}/tls.key\"?\s*$", tls, re.MULTILINE)
    assert "verify_and_map" not in tls  # users are nkeys, not certificate subjects
    # The users: only the generated authorization, included from its Secret.
    (include,) = re.findall(r'^include\s+"?([^"\s]+)"?\s*$', conf, re.MULTILINE)
    included = posixpath.normpath(posixpath.join(posixpath.dirname(nats["config_path"]), include))
    assert included == _mount_of_secret(nats, NATS_AUTH) + "/auth.conf"
    for weaker in ("no_auth_user", "authorization", "accounts", "users", "allow_non_tls", "token"):
        assert not re.search(rf"^\s*{weaker}\b", conf, re.MULTILINE), weaker
    # JetStream stores on the data volume.
    (jetstream,) = re.findall(r"^jetstream\s*\{([^}]*)\}", conf, re.MULTILINE)
    (data,) = [m["mountPath"] for m in nats["container"]["volumeMounts"] if m["name"] == "data"]
    assert re.search(rf"^\s*store_dir:\s*\"?{data}\"?\s*$", jetstream, re.MULTILINE)
    # NATS holds no service's bus Secret.
    secrets = {v["secret"]["secretName"] for v in nats["volumes"].values() if "secret" in v}
    assert secrets == {NATS_TLS, NATS_AUTH}


# --- the dev NATS, started from the rendered objects and joined as each service -------------------


def _files_of(doc: dict[str, Any]) -> dict[str, bytes]:
    if doc["kind"] == "Secret":
        files = {k: base64.b64decode(v) for k, v in doc.get("data", {}).items()}
        return files | {k: v.encode() for k, v in doc.get("stringData", {}).items()}
    return {k: v.encode() for k, v in doc.get("data", {}).items()}


def _materialize(root: Path, pod: dict[str, Any], container: dict[str, Any], docs: Docs) -> dict[str, Path]:
    """Write what ``container``'s mounts would hold under ``root``; mount path -> directory."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    where: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        volume = volumes.get(mount["name"], {})  # a volumeClaimTemplate is not in volumes
        source = None
        if "secret" in volume:
            source = docs[("Secret", volume["secret"]["secretName"])]
        elif "configMap" in volume:
            source = docs[("ConfigMap", volume["configMap"]["name"])]
        for name, content in (_files_of(source) if source else {}).items():
            (target / name).write_bytes(content)
        where[mount["mountPath"]] = target
    return where


def _relocate(value: str, where: dict[str, Path]) -> str:
    for mount in sorted(where, key=len, reverse=True):
        if value == mount or value.startswith(mount + "/"):
            return str(where[mount]) + value.removeprefix(mount)
    return value


def _nats_config_under(root: Path, docs: Docs) -> Path:
    """The dev NATS's configuration and the files of its mounts, as its pod sees them, under
    ``root``: the paths in the configuration moved there too."""
    nats = dev_nats()
    where = _materialize(root, nats["sts"]["spec"]["template"]["spec"], nats["container"], docs)
    path = Path(_relocate(nats["config_path"], where))
    text = path.read_text()
    for mount in sorted(where, key=len, reverse=True):
        text = re.sub(
            rf"(?<![\w/.]){re.escape(mount)}(?=[/\s\"]|$)", str(where[mount]), text, flags=re.MULTILINE
        )
    path.write_text(text)
    return path


def _service_env(name: str, root: Path, docs: Docs, port: int) -> dict[str, str]:
    """``name``'s settings as its pod gets them (the ConfigMaps, its env, the files of its mounts
    under ``root``), pointed at 127.0.0.1:``port`` but checking the certificate for the host of
    the URL it was given, as in the cluster."""
    spec = trustpub_deployments("dev")[name]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    mounts = _materialize(root, spec, container, docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= docs[("ConfigMap", source["configMapRef"]["name"])]["data"]
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("configMapKeyRef")
        if "value" in entry:
            env[entry["name"]] = _relocate(entry["value"], mounts)
        elif ref:
            env[entry["name"]] = docs[("ConfigMap", ref["name"])]["data"][ref["key"]]
    url = urlsplit(env["TRUSTPUB_NATS_URL"])
    env["TRUSTPUB_NATS_URL"] = f"{url.scheme}://127.0.0.1:{port}"
    env["TRUSTPUB_NATS_TLS_SERVER_NAME"] = str(url.hostname)
    return env


@contextlib.contextmanager
def _nats_server(conf: Path, port: int, monitor: int) -> Iterator[None]:
    from deploy.devstack.servers import DevServerError, nats_server_binary, wait_for_port  # noqa: PLC0415

    log = conf.parent / "nats.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603  (the venv's nats-server)
            [nats_server_binary(), "-c", str(conf), "-p", str(port), "-m", str(monitor)],
            stdout=out,
            stderr=out,
        )
    try:
        try:
            wait_for_port(port, WAIT_S, proc)
        except DevServerError:
            pytest.fail(f"nats-server did not start: {log.read_text()[-3000:]}")
        yield
    finally:
        proc.terminate()
        proc.wait(10)


async def _join_as(name: str, env: dict[str, str]) -> list[Exception]:
    """Connect as ``name`` with its settings; subscribe to its inbox, then to everything.
    Returns the errors NATS reported."""
    nats_py = need_module("nats")
    from trustpub.runtime.bus import connect_options  # noqa: PLC0415
    from trustpub.runtime.config import CommonSettings, load  # noqa: PLC0415

    settings = load(CommonSettings, env)
    options = connect_options(settings, name, settings.subject_root)
    assert options["tls_handshake_first"] is True
    errors: list[Exception] = []

    async def record(exc: Exception) -> None:
        errors.append(exc)

    client = await nats_py.connect(
        env["TRUSTPUB_NATS_URL"], **options, allow_reconnect=False, connect_timeout=5, error_cb=record
    )
    try:
        await client.subscribe(f"{options['inbox_prefix']}.probe")
        await client.flush(timeout=5)
        assert not errors, (name, errors)
        await client.subscribe(">")
        with contextlib.suppress(Exception):
            await client.flush(timeout=WAIT_S)
        # The server's refusal arrives on its own: wait for it (the caller checks what it says).
        with contextlib.suppress(AssertionError):
            await until(lambda: errors, "NATS refuses the subscription to everything")
    finally:
        await client.close()
    return errors


async def _join_without_credentials(port: int, ca: str, server_name: str) -> None:
    from deploy.devstack.servers import joined  # noqa: PLC0415

    async with joined(
        f"tls://127.0.0.1:{port}",
        5,
        tls=ssl.create_default_context(cafile=ca),
        tls_hostname=server_name,
        tls_handshake_first=True,
    ):
        pass


@pytest.mark.slow
def test_dev_nats_admits_each_service_with_its_own_secret_and_nobody_without_one(tmp_path):
    from deploy.devstack.servers import free_port  # noqa: PLC0415

    from trustpub.runtime.bus import minter_key_ids  # noqa: PLC0415
    from trustpub.runtime.seal import Seals  # noqa: PLC0415

    made = tilt_made_objects(tmp_path / "tilt")
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render("dev") + made}
    port, monitor = free_port(), free_port()
    with _nats_server(_nats_config_under(tmp_path / "nats", docs), port, monitor):
        # Before TLS, the server says nothing: no INFO, no nkey challenge, in clear.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.settimeout(1.0)
            with contextlib.suppress(TimeoutError, ConnectionError):
                assert b"INFO" not in raw.recv(4096)
        envs = {name: _service_env(name, tmp_path / "pods" / name, docs, port) for name in SERVICES}
        for name, env in envs.items():
            # Its seal key rings are all there, and nothing of the other services'.
            bus_dir = Path(env["TRUSTPUB_BUS_SECRETS_DIR"])
            Seals.load(name, bus_dir)
            assert {p.name for p in bus_dir.iterdir()} == bus_files(name)
            # Joined as itself, with the generated permissions: its inbox, not everything.
            errors = asyncio.run(_join_as(name, env))
            assert any("permissions violation" in str(e).lower() for e in errors), (name, errors)
        # The gateway trusts exactly the key the minter signs with; the registry has the issuers.
        kids = minter_key_ids(Path(envs["minter"]["TRUSTPUB_MINTER_KEY_FILE"]).read_text())
        assert envs["gateway"]["TRUSTPUB_MINTER_KEY_IDS"] == ",".join(kids)
        assert Path(envs["registry"]["TRUSTPUB_ISSUERS_FILE"]).is_file()
        # Without credentials, TLS is not enough.
        gateway = envs["gateway"]
        with pytest.raises(need_module("nats.errors").Error, match="Authorization Violation"):
            asyncio.run(
                _join_without_credentials(
                    port, gateway["TRUSTPUB_NATS_TLS_CA"], gateway["TRUSTPUB_NATS_TLS_SERVER_NAME"]
                )
            )
