"""The corpus's cast (DESIGN.md, "Hostile input"): issuers, keys, registered publishers.

Every key is generated once per session with ``cryptography`` (real RSA and P-256); every token
is signed at run time with those keys. The same cast serves both levels: the direct level
loads these public keys into the verifier's key cache, the end-to-end level serves them from
local issuers (DevIssuer) that the stack's issuers file names.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from deploy.devstack.issuer import DevIssuer, SigningKey

from trustpub.providers.issuers import ACTIVESTATE, GITHUB, GITLAB, GOOGLE

GH = GITHUB
GL = GITLAB
GG = GOOGLE
AS = ACTIVESTATE
# Issuers the operator configured besides the built-in four (corpus cases E7, E8, C7).
GHES = "https://ghes.acme.test/_services/token"  # a GitHub Enterprise tenant, for org acme only
ES = "https://es256.issuer.test"  # an issuer pinned to ES256, for the ECDSA rows
OFF = "https://disabled.issuer.test"  # configured, switched off by the operator
AUD = "trustpub-test"
LEEWAY = 30


@dataclass
class Cast:
    """Keys of every issuer (the attacker's included)."""

    gh: SigningKey = field(default_factory=lambda: SigningKey.generate("gh-1"))
    gl: SigningKey = field(default_factory=lambda: SigningKey.generate("gl-1"))
    gg: SigningKey = field(default_factory=lambda: SigningKey.generate("gg-1"))
    as_: SigningKey = field(default_factory=lambda: SigningKey.generate("as-1"))
    ghes: SigningKey = field(default_factory=lambda: SigningKey.generate("ghes-1"))
    es: SigningKey = field(default_factory=lambda: SigningKey.generate("es-1", ec_key=True))
    att: SigningKey = field(default_factory=lambda: SigningKey.generate("att-1"))
    att_ec: SigningKey = field(default_factory=lambda: SigningKey.generate("att-ec", ec_key=True))

    def by_issuer(self) -> dict[str, SigningKey]:
        return {GH: self.gh, GL: self.gl, GG: self.gg, AS: self.as_, GHES: self.ghes, ES: self.es}


PROVIDER_OF = {GH: "github", GL: "gitlab", GG: "google", AS: "activestate", GHES: "github", ES: "github"}


def issuers_toml(base_urls: dict[str, str]) -> str:
    """The issuers file of both levels: each served issuer's keys from its loopback URL."""
    out = []
    for issuer, provider in PROVIDER_OF.items():
        out.append(
            "[[issuer]]\n"
            f'issuer = "{issuer}"\n'
            f'provider = "{provider}"\n'
            f'discovery_url = "{base_urls.get(issuer, "http://127.0.0.1:9")}/.well-known/openid-configuration"\n'
            "allow_loopback_http = true\n" + ('algorithms = ["ES256"]\n' if issuer == ES else "")
        )
    out.append(f'[[issuer]]\nissuer = "{OFF}"\nprovider = "github"\nenabled = false\n')
    return "\n".join(out)


class AttackerIdP(DevIssuer):
    """The attacker's identity provider (the threat model, DESIGN.md): a working discovery document and
    JWKS with ``K_att`` and ``K_att_ec``. trustpub must never ask it anything: every request,
    to any path, is counted in ``hits["any"]`` (invariant V4)."""

    def app(self) -> web.Application:
        lock = threading.Lock()

        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            with lock:
                self.hits["any"] = self.hits.get("any", 0) + 1
            return await handler(request)  # type: ignore[no-any-return]

        app = web.Application(middlewares=[count])
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/.well-known/jwks", self._jwks)
        app.router.add_get("/jwks", self._jwks)

        async def cert(_: web.Request) -> web.Response:
            return web.Response(text="-----BEGIN CERTIFICATE-----\n")

        app.router.add_get("/cert.pem", cert)
        return app


# The registered publishers (P_gh and the others the rows need): issuer, project, and the
# fields of trustpub.providers.github.validate_spec. The end-to-end level registers them with
# the CLI; the direct level runs the provider's rules against the same specs.
PUBLISHERS: list[tuple[str, str, dict[str, str]]] = [
    (
        GH,
        "demo-pkg",
        {
            "owner": "octo-org",
            "owner_id": "1001",
            "repository": "demo",
            "repository_id": "2002",
            "workflow": "release.yml",
            "environment": "release",
        },
    ),
    # J9: a publisher without an environment accepts a token that names one.
    (
        GH,
        "noenv-pkg",
        {
            "owner": "octo-org",
            "owner_id": "1001",
            "repository": "noenv",
            "repository_id": "2003",
            "workflow": "release.yml",
        },
    ),
    # J2: the Kelvin sign folds to "k" under str.lower().
    (GH, "kube-pkg", {"owner": "kube", "owner_id": "5005", "repository": "demo", "workflow": "release.yml"}),
    # E7: the GHES tenant's own organisation.
    (
        GHES,
        "acme-pkg",
        {
            "owner": "acme",
            "owner_id": "4242",
            "repository": "tool",
            "repository_id": "4343",
            "workflow": "release.yml",
            "environment": "release",
        },
    ),
    # C7: the same repository, through the ES256 issuer.
    (
        ES,
        "es-pkg",
        {
            "owner": "octo-org",
            "owner_id": "1001",
            "repository": "demo",
            "repository_id": "2002",
            "workflow": "release.yml",
            "environment": "release",
        },
    ),
]


def cli_args(issuer: str, project: str, fields: dict[str, str]) -> list[str]:
    """``trustpub publisher add github ...`` for one of :data:`PUBLISHERS`."""
    args = ["publisher", "add", "github", "--project", project, "--issuer", issuer]
    for name, value in fields.items():
        args += [f"--{name.replace('_', '-')}", value]
    return args


AS_ACTOR = "00000000-0000-1000-8000-000000000077"
AS_OTHER_ACTOR = "00000000-0000-1000-8000-000000000078"

# P_gl, P_gg, P_as of §3.1: provider, issuer, project, the provider's validate_spec arguments
# (direct level) and the CLI's (end to end).
OTHER_PUBLISHERS: list[tuple[str, str, str, dict[str, str], list[str]]] = [
    (
        "gitlab",
        GL,
        "gl-pkg",
        {
            "namespace": "grp/sub",
            "project": "proj",
            "ci_config_path": ".gitlab-ci.yml",
            "environment": "production",
            "namespace_id": "31",
            "project_id": "32",
        },
        [
            "--project-path",
            "grp/sub/proj",
            "--ci-config-path",
            ".gitlab-ci.yml",
            "--environment",
            "production",
            "--namespace-id",
            "31",
            "--project-id",
            "32",
        ],
    ),
    (
        "google",
        GG,
        "gg-pkg",
        {"email": "pub@proj.iam.gserviceaccount.com", "sub": "1122334455"},
        ["--email", "pub@proj.iam.gserviceaccount.com", "--sub", "1122334455"],
    ),
    (
        "activestate",
        AS,
        "as-pkg",
        {"organization": "acme", "project": "tool", "actor_id": AS_ACTOR},
        ["--organization", "acme", "--activestate-project", "tool", "--actor-id", AS_ACTOR],
    ),
]

# Pending publishers (group M): the project name each would create, and its repository.
# "m1-pkg" is created as a project (spelt M1_Pkg) after its pending publisher was registered;
# "m2-pkg"'s pending publisher is made to have expired; "m3-pkg" has two, raced.
PENDING: list[tuple[str, str]] = [
    ("new-pkg", "newrepo"),
    ("m1-pkg", "m1repo"),
    ("m2-pkg", "m2repo"),
    ("m3-pkg", "m3a"),
    ("m3-pkg", "m3b"),
]


def pending_args(project: str, repository: str) -> list[str]:
    return [
        "publisher", "add", "github", "--pending-project", project, "--registrant", f"corpus-{repository}",
        "--owner", "octo-org", "--owner-id", "1001", "--repository", repository, "--workflow", "release.yml",
    ]  # fmt: skip
