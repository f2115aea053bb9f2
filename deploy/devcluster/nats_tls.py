"""The dev overlay's NATS certificate, made at ``tilt up`` and never committed.

    python -m deploy.devcluster.nats_tls .run/k8s-dev [--namespace trustpub-dev] [--service nats]

Under DIR, as ``make up`` does under ``.run/bus`` (``deploy.devstack.bus``): a development CA
(``DIR/tls/ca.pem``; its key is not kept) and a server certificate valid for the in-cluster
NATS service's names (``nats``, ``nats.<namespace>``, ``nats.<namespace>.svc``,
``nats.<namespace>.svc.cluster.local``, and localhost for a port-forward), plus the
deployment's bus secrets in ``DIR/secrets`` if ``trustpub bus init`` has not made them yet.
Prints the Secret ``trustpub-nats-tls`` (``kubernetes.io/tls``) that k8s/infra/nats mounts;
the CA goes to the services through ``trustpub bus kubernetes DIR/secrets --nats-ca
DIR/tls/ca.pem`` (the ConfigMap ``trustpub-nats-ca``). Running it again reuses what is there.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

from deploy.devstack.bus import DevBus

NATS_TLS_SECRET = "trustpub-nats-tls"


def server_names(service: str, namespace: str) -> tuple[str, ...]:
    """Every name a pod may reach ``service`` in ``namespace`` by."""
    return (
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    )


def render(directory: Path, namespace: str, service: str) -> str:
    bus = DevBus(directory, server_names=server_names(service, namespace)).ensure()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": NATS_TLS_SECRET, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(bus.server_cert.read_bytes()).decode("ascii"),
            "tls.key": base64.b64encode(bus.server_key.read_bytes()).decode("ascii"),
        },
    }
    # JSON is YAML.
    return "---\n" + json.dumps(secret, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.devcluster.nats_tls", description=__doc__)
    parser.add_argument("dir", type=Path, help="where the CA, the certificate and the secrets are kept")
    parser.add_argument("--namespace", default="trustpub-dev", help="the dev overlay's namespace")
    parser.add_argument("--service", default="nats", help="the NATS Service's name (k8s/infra/nats)")
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.dir, args.namespace, args.service))
    return 0


if __name__ == "__main__":
    sys.exit(main())
