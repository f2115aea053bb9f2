"""``trustpub bus``: a deployment's bus secrets and the NATS authorization that goes with them.

    trustpub bus init DIR                      create what is missing: nkey seeds, seal keys, minter key
    trustpub bus authorization DIR [--root R]  print nats-server's authorization block (public keys only)
    trustpub bus kubernetes DIR [--namespace N] [--root R] [--nats-namespace M] [--nats-ca CA.pem]
                                               print what k8s/ references by name: one Secret per
                                               service, the NATS authorization, the minter key ids
                                               (and the CA of NATS's certificate)

Everything is generated from the endpoint declarations (trustpub.messages.endpoints), so the
permissions NATS enforces are the ones the services are written against.
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

from trustpub.messages import authorization
from trustpub.messages.endpoints import SERVICES, pair_name, pairs_of
from trustpub.runtime.bus import MINTER_KEY_FILE, init_secrets, minter_key_ids, public_keys
from trustpub.runtime.config import ConfigError


class BusCommandError(Exception):
    """A ``trustpub bus`` command cannot do what was asked; the message says why."""


def add_commands(commands: Any, parser_class: type) -> None:  # noqa: ANN401  (argparse's private subparsers type)
    bus = commands.add_parser("bus", help="bus secrets and the NATS authorization").add_subparsers(
        dest="action", metavar="{init,authorization,kubernetes}", required=True, parser_class=parser_class
    )
    init = bus.add_parser("init", help="create the missing secrets of a deployment in DIR (kept if present)")
    init.add_argument("dir", type=Path)
    auth = bus.add_parser("authorization", help="print the nats-server authorization block for DIR's users")
    auth.add_argument("dir", type=Path)
    auth.add_argument(
        "--root",
        action="append",
        dest="roots",
        metavar="ROOT",
        help="subject root (TRUSTPUB_SUBJECT_ROOT; repeat for several deployments; default trustpub)",
    )
    k8s = bus.add_parser("kubernetes", help="print DIR's secrets as Kubernetes Secrets, one per service")
    k8s.add_argument("dir", type=Path)
    k8s.add_argument("--namespace", default="", help="namespace of the Secrets (default: none given)")
    k8s.add_argument(
        "--root", default="trustpub", help="subject root of the NATS authorization (default trustpub)"
    )
    k8s.add_argument(
        "--nats-namespace",
        default=None,
        metavar="NAMESPACE",
        help="namespace of the trustpub-nats-auth Secret, where NATS runs (default: --namespace)",
    )
    k8s.add_argument(
        "--nats-ca",
        type=Path,
        default=None,
        metavar="CA.pem",
        help="also print the trustpub-nats-ca ConfigMap: the CA that signed NATS's certificate",
    )


def run(args: argparse.Namespace) -> str:
    """Run one ``bus`` command; returns what it prints.

    Raises:
        BusCommandError: the directory lacks a secret, or a secret is unusable.
    """
    try:
        if args.action == "init":
            return _init(args.dir)
        if args.action == "authorization":
            return authorization.render(tuple(args.roots or ("trustpub",)), public_keys(args.dir))
        return _kubernetes(args)
    except (ConfigError, ValueError) as exc:
        raise BusCommandError(str(exc)) from None
    except OSError as exc:
        raise BusCommandError(f"{exc.filename}: {exc.strerror}") from None


def _init(directory: Path) -> str:
    created = init_secrets(directory)
    lines = [f"created {path}" for path in created] or [f"{directory} already holds every secret"]
    lines.append("public nkeys (the NATS users; `trustpub bus authorization` prints their permissions):")
    lines.extend(f"  {service:9} {key}" for service, key in public_keys(directory).items())
    kids = minter_key_ids((directory / MINTER_KEY_FILE).read_text())
    lines.append(f"minter key ids (the gateway's TRUSTPUB_MINTER_KEY_IDS): {','.join(kids)}")
    return "\n".join(lines)


def _files_of(service: str) -> list[str]:
    files = [f"{service}.nk", *(f"{pair_name(*p)}.keys" for p in pairs_of(service))]
    if service == "minter":
        files.append(MINTER_KEY_FILE)
    return files


# The names the manifests of k8s/ reference (each Deployment mounts its own bus Secret).
BUS_SECRET = "trustpub-bus-{service}"
NATS_AUTH_SECRET = "trustpub-nats-auth"
NATS_AUTH_FILE = "auth.conf"
MINTER_KEY_IDS_CONFIGMAP = "trustpub-minter-key-ids"
NATS_CA_CONFIGMAP = "trustpub-nats-ca"
NATS_CA_FILE = "ca.pem"


def _kubernetes(args: argparse.Namespace) -> str:
    directory: Path = args.dir
    namespace: str = args.namespace
    nats_namespace: str | None = getattr(args, "nats_namespace", None)
    nats_namespace = namespace if nats_namespace is None else nats_namespace
    nats_ca: Path | None = getattr(args, "nats_ca", None)
    docs: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"namespace": namespace} if namespace else {}
    nats_meta: dict[str, Any] = {"namespace": nats_namespace} if nats_namespace else {}
    for service in SERVICES:
        data = {
            name: base64.b64encode((directory / name).read_bytes()).decode("ascii")
            for name in _files_of(service)
        }
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": BUS_SECRET.format(service=service), **meta},
                "type": "Opaque",
                "data": data,
            }
        )
    kids = minter_key_ids((directory / MINTER_KEY_FILE).read_text())
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": NATS_AUTH_SECRET, **nats_meta},
            "type": "Opaque",
            "stringData": {NATS_AUTH_FILE: authorization.render((args.root,), public_keys(directory))},
        }
    )
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": MINTER_KEY_IDS_CONFIGMAP, **meta},
            "data": {"TRUSTPUB_MINTER_KEY_IDS": ",".join(kids)},
        }
    )
    if nats_ca is not None:
        # A certificate only: public, so a ConfigMap (nothing of a Secret goes in one).
        ca = nats_ca.read_text()
        if "PRIVATE KEY" in ca or "BEGIN CERTIFICATE" not in ca:
            msg = f"{nats_ca}: expected the CA's certificate (PEM), and no private key"
            raise ValueError(msg)
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": NATS_CA_CONFIGMAP, **meta},
                "data": {NATS_CA_FILE: ca},
            }
        )
    # JSON is YAML: one document per object.
    return "\n".join("---\n" + json.dumps(doc, indent=2) for doc in docs)
