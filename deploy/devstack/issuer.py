"""A local OpenID Connect issuer with real keys, playing GitHub Actions (or any provider).

It serves a discovery document, a JWKS and, like GitHub's ``ACTIONS_ID_TOKEN_REQUEST_URL``,
a token endpoint (``GET /token?audience=X`` with ``Authorization: bearer <request token>``
answering ``{"value": "<JWT>"}``), so the ``id`` library obtains tokens from it unchanged.
Tests use it in-process to sign any token they like (real RSA, real HTTP); ``make up`` runs
it as a process: ``python -m deploy.devstack.issuer --port 8900``.

Its behaviour can be changed by the test driving it (``mode``): serve normally, fail with
500, hang, or serve garbage, and keys can be added and withdrawn to play a rotation.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from jwcrypto import jwk

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def enc_json(obj: Any) -> str:  # noqa: ANN401
    return b64u(json.dumps(obj, separators=(",", ":")).encode())


@dataclass
class SigningKey:
    """A private key with its ``kid``; RSA-2048 by default, P-256 with ``ec=True``."""

    kid: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, kid: str | None = None, *, ec_key: bool = False, bits: int = 2048) -> SigningKey:
        priv: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
            ec.generate_private_key(ec.SECP256R1())
            if ec_key
            else rsa.generate_private_key(public_exponent=65537, key_size=bits)
        )
        return cls(kid=kid or uuid.uuid4().hex[:16], private=priv)

    @property
    def alg(self) -> str:
        return "ES256" if isinstance(self.private, ec.EllipticCurvePrivateKey) else "RS256"

    def public_jwk(self) -> dict[str, Any]:
        key = jwk.JWK.from_pyca(self.private.public_key())
        out: dict[str, Any] = key.export_public(as_dict=True)
        out.update(kid=self.kid, use="sig", alg=self.alg)
        return out

    def sign(self, signing_input: bytes, alg: str | None = None) -> bytes:
        alg = alg or self.alg
        if isinstance(self.private, rsa.RSAPrivateKey):
            digest = {
                "RS256": hashes.SHA256(),
                "RS384": hashes.SHA384(),
                "RS512": hashes.SHA512(),
                "PS256": hashes.SHA256(),
            }[alg]
            pad = (
                padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
                if alg.startswith("PS")
                else padding.PKCS1v15()
            )
            return self.private.sign(signing_input, pad, digest)
        der = self.private.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def compact(key: SigningKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A compact JWS over exactly these header and claims (no checks: tests forge freely)."""
    signing_input = f"{enc_json(header)}.{enc_json(claims)}"
    alg = header.get("alg", key.alg)
    sig = key.sign(
        signing_input.encode(),
        alg if isinstance(alg, str) and alg in {"RS256", "RS384", "RS512", "PS256", "ES256"} else None,
    )
    return f"{signing_input}.{b64u(sig)}"


def github_claims(  # noqa: PLR0913  (one keyword per claim a test varies)
    audience: str,
    *,
    issuer: str = GITHUB_ISSUER,
    owner: str = "octo-org",
    owner_id: str = "1001",
    repo: str = "demo",
    repo_id: str = "2002",
    workflow: str = "release.yml",
    ref: str = "refs/tags/v1.0.0",
    environment: str | None = "release",
    event_name: str = "push",
    now: int | None = None,
    **overrides: Any,  # noqa: ANN401
) -> dict[str, Any]:
    """Claims shaped like a GitHub Actions ID token.

    Shape per GitHub's documentation, "About security hardening with OpenID Connect",
    example token (docs.github.com, actions/security-for-github-actions): ``nbf`` slightly
    before ``iat``, ``exp`` five minutes after; strings for every id.
    """
    now = int(time.time()) if now is None else now
    wf = f"{owner}/{repo}/.github/workflows/{workflow}@{ref}"
    claims: dict[str, Any] = {
        "jti": str(uuid.uuid4()),
        "sub": f"repo:{owner}/{repo}:environment:{environment}"
        if environment
        else f"repo:{owner}/{repo}:ref:{ref}",
        "aud": audience,
        "ref": ref,
        "sha": "0123456789abcdef0123456789abcdef01234567",
        "repository": f"{owner}/{repo}",
        "repository_owner": owner,
        "repository_owner_id": owner_id,
        "repository_id": repo_id,
        "repository_visibility": "public",
        "run_id": "5847329176",
        "run_number": "42",
        "run_attempt": "1",
        "runner_environment": "github-hosted",
        "actor": "octocat",
        "actor_id": "583231",
        "workflow": "Release",
        "head_ref": "",
        "base_ref": "",
        "event_name": event_name,
        "ref_type": "tag" if ref.startswith("refs/tags/") else "branch",
        "ref_protected": "false",
        "workflow_ref": wf,
        "workflow_sha": "0123456789abcdef0123456789abcdef01234567",
        "job_workflow_ref": wf,
        "job_workflow_sha": "0123456789abcdef0123456789abcdef01234567",
        "iss": issuer,
        "nbf": now - 5,
        "iat": now,
        "exp": now + 300,
    }
    if environment:
        claims["environment"] = environment
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


GITLAB_ISSUER = "https://gitlab.com"
GOOGLE_ISSUER = "https://accounts.google.com"
ACTIVESTATE_ISSUER = "https://platform.activestate.com/api/v1/oauth/oidc"


def gitlab_claims(  # noqa: PLR0913  (one keyword per claim a test varies)
    audience: str,
    *,
    issuer: str = GITLAB_ISSUER,
    namespace: str = "my-group",
    project: str = "my-project",
    namespace_id: str = "72",
    project_id: str = "20",
    ci_config_path: str = ".gitlab-ci.yml",
    ref: str = "main",
    ref_type: str = "branch",
    environment: str | None = "production",
    now: int | None = None,
    **overrides: Any,  # noqa: ANN401
) -> dict[str, Any]:
    """Claims shaped like a GitLab CI/CD ID token (``id_tokens:`` in .gitlab-ci.yml).

    Shape per GitLab's documentation, "OpenID Connect (OIDC) Authentication Using ID Tokens",
    section "ID token payload" / "Token payload" (docs.gitlab.com/ci/secrets/id_token_authentication/):
    string ids, ``ref_path`` the full ref, ``ci_config_ref_uri`` as
    ``<host>/<project_path>//<file>@<ref_path>``, ``sub`` as
    ``project_path:<path>:ref_type:<type>:ref:<ref>``, ``runner_id`` a number. The host in
    ``ci_config_ref_uri`` is the issuer's (self-managed instances use theirs).
    """
    now = int(time.time()) if now is None else now
    path = f"{namespace}/{project}"
    ref_path = f"refs/heads/{ref}" if ref_type == "branch" else f"refs/tags/{ref}"
    sha = "714a629c0b401fdce83e847fc9589983fc6f46bc"
    host = issuer.removeprefix("https://").rstrip("/")
    claims: dict[str, Any] = {
        "namespace_id": namespace_id,
        "namespace_path": namespace,
        "project_id": project_id,
        "project_path": path,
        "user_id": "1",
        "user_login": "sample-user",
        "user_email": "sample-user@example.com",
        "user_access_level": "developer",
        "pipeline_id": "574",
        "pipeline_source": "push",
        "job_id": "302",
        "ref": ref,
        "ref_type": ref_type,
        "ref_path": ref_path,
        "ref_protected": "true",
        "runner_id": 1,
        "runner_environment": "gitlab-hosted",
        "sha": sha,
        "project_visibility": "public",
        "ci_config_ref_uri": f"{host}/{path}//{ci_config_path}@{ref_path}",
        "ci_config_sha": sha,
        "jti": str(uuid.uuid4()),
        "iss": issuer,
        "iat": now,
        "nbf": now - 5,
        # GitLab's default ID token lifetime is the job's; five minutes keeps well inside
        # every configured issuer's maximum.
        "exp": now + 300,
        "sub": f"project_path:{path}:ref_type:{ref_type}:ref:{ref}",
        "aud": audience,
    }
    if environment:
        claims.update(
            environment=environment,
            environment_protected="true",
            deployment_tier="production",
            environment_action="start",
        )
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def google_claims(
    audience: str,
    *,
    issuer: str = GOOGLE_ISSUER,
    email: str = "publisher@my-project.iam.gserviceaccount.com",
    sub: str = "117898162393834569872",
    now: int | None = None,
    **overrides: Any,  # noqa: ANN401
) -> dict[str, Any]:
    """Claims shaped like a Google service-account ID token (no ``jti``).

    Shape per Google Cloud's documentation, "Verify the identity of VMs", section "Token
    payload" (cloud.google.com/compute/docs/instances/verifying-instance-identity) and
    "Create an ID token" for service accounts (cloud.google.com/docs/authentication/get-id-token):
    ``email_verified`` the JSON boolean, ``sub`` a decimal string, ``azp`` the client id,
    one hour of lifetime, and no ``jti``.
    """
    now = int(time.time()) if now is None else now
    claims: dict[str, Any] = {
        "aud": audience,
        "azp": sub,
        "email": email,
        "email_verified": True,
        "exp": now + 3600,
        "iat": now,
        "iss": issuer,
        "sub": sub,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def activestate_claims(  # noqa: PLR0913  (one keyword per claim a test varies)
    audience: str,
    *,
    issuer: str = ACTIVESTATE_ISSUER,
    organization: str = "fakeorg",
    project: str = "fakeproject",
    actor: str = "fakeuser",
    actor_id: str = "00000000-0000-1000-8000-000000000002",
    now: int | None = None,
    **overrides: Any,  # noqa: ANN401
) -> dict[str, Any]:
    """Claims shaped like an ActiveState Platform ID token for its PyPI publisher.

    ActiveState's public documentation does not print a full token; the shape is the one
    PyPI consumes, from Warehouse's ActiveState model and its tests
    (pypi/warehouse, warehouse/oidc/models/activestate.py and
    tests/unit/oidc/models/test_activestate.py): ``sub`` as
    ``org:<organization>:project:<project>``, ``builder`` ``pypi-publisher``, UUIDs for ids.
    Whether ActiveState sends a ``jti`` is not documented; the helper includes one, and
    trustpub's verifier accepts tokens with or without (issuers.Issuer.requires_jti).
    """
    now = int(time.time()) if now is None else now
    claims: dict[str, Any] = {
        "sub": f"org:{organization}:project:{project}",
        "actor": actor,
        "actor_id": actor_id,
        "artifact_id": "3f2a1c9e-4b5d-4e6f-8a7b-9c0d1e2f3a4b",
        "builder": "pypi-publisher",
        "ingredient": "my-package",
        "organization": organization,
        "organization_id": "7d1c2b3a-0000-4000-8000-00000000aaaa",
        "project": project,
        "project_id": "9e8d7c6b-0000-4000-8000-00000000bbbb",
        "project_path": f"{organization}/{project}",
        "project_visibility": "public",
        "jti": str(uuid.uuid4()),
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@dataclass
class DevIssuer:
    """The issuer's state: keys, behaviour, and counters the tests read."""

    issuer: str = GITHUB_ISSUER
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.generate("dev-1")])
    # The bearer secret the token endpoint requires (ACTIONS_ID_TOKEN_REQUEST_TOKEN).
    request_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # Defaults for the token endpoint's claims (github_claims keyword arguments).
    profile: dict[str, Any] = field(default_factory=dict)
    # "ok", "error" (HTTP 500), "hang" (never answers), "garbage" (see ``garbage``).
    mode: str = "ok"
    garbage: bytes = b"<html>not json</html>"
    hits: dict[str, int] = field(default_factory=dict)
    base_url: str = ""

    @property
    def signing_key(self) -> SigningKey:
        return self.keys[0]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys]}

    def token(
        self, claims: dict[str, Any], *, key: SigningKey | None = None, header: dict[str, Any] | None = None
    ) -> str:
        key = key or self.signing_key
        hdr = header if header is not None else {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
        return compact(key, hdr, claims)

    def github_token(self, audience: str, **kw: Any) -> str:  # noqa: ANN401
        return self.token(github_claims(audience, issuer=self.issuer, **{**self.profile, **kw}))

    # -- HTTP ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/.well-known/jwks", self._jwks)
        app.router.add_get("/token", self._token)
        return app

    async def _faults(self, name: str) -> web.Response | None:
        self.hits[name] = self.hits.get(name, 0) + 1
        if self.mode == "error":
            return web.json_response({"error": "down"}, status=500)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "garbage":
            return web.Response(body=self.garbage, content_type="application/json")
        return None

    async def _discovery(self, _: web.Request) -> web.Response:
        fault = await self._faults("discovery")
        if fault is not None:
            return fault
        return web.json_response(
            {
                "issuer": self.issuer,
                "jwks_uri": f"{self.base_url}/.well-known/jwks",
                "subject_types_supported": ["public", "pairwise"],
                "response_types_supported": ["id_token"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "claims_supported": [
                    "sub",
                    "aud",
                    "exp",
                    "iat",
                    "iss",
                    "jti",
                    "nbf",
                    "ref",
                    "repository",
                    "repository_owner",
                    "repository_owner_id",
                    "workflow_ref",
                    "job_workflow_ref",
                    "environment",
                    "event_name",
                    "sha",
                ],
            }
        )

    async def _jwks(self, _: web.Request) -> web.Response:
        fault = await self._faults("jwks")
        if fault is not None:
            return fault
        return web.json_response(self.jwks())

    async def _token(self, request: web.Request) -> web.Response:
        self.hits["token"] = self.hits.get("token", 0) + 1
        # The scheme is case-insensitive (RFC 7235): the id library sends "bearer", uv "Bearer".
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            credential.encode(), self.request_token.encode()
        ):
            return web.json_response({"message": "Bad credentials"}, status=401)
        audience = request.query.get("audience")
        if not audience:
            return web.json_response({"message": "audience is required"}, status=400)
        return web.json_response({"value": self.github_token(audience)})

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[DevIssuer]:
        # A short shutdown: a handler held in "hang" mode must not hold teardown for a minute.
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
        self.base_url = f"http://{host}:{bound}"
        try:
            yield self
        finally:
            await runner.cleanup()

    @contextlib.contextmanager
    def serve_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[DevIssuer]:
        """Serve from a thread of its own, for callers whose event loop is not always running
        (a synchronous test fixture, the benchmark driver)."""
        ready = threading.Event()
        stop: list[asyncio.Event] = []
        failure: list[BaseException] = []

        async def run() -> None:
            stop.append(asyncio.Event())
            try:
                async with self.serve(host, port):
                    ready.set()
                    await stop[0].wait()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                raise

        loop = asyncio.new_event_loop()

        def target() -> None:
            try:
                loop.run_until_complete(run())
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(stop[0].set)
            thread.join(10)

    def issuers_toml(self, provider: str = "github") -> str:
        """The issuers-file entry that points trustpub at this issuer's loopback keys."""
        return (
            "[[issuer]]\n"
            f'issuer = "{self.issuer}"\n'
            f'provider = "{provider}"\n'
            f'discovery_url = "{self.base_url}/.well-known/openid-configuration"\n'
            "allow_loopback_http = true\n"
        )


BUILTIN_ISSUERS = {
    "https://token.actions.githubusercontent.com": "github",
    "https://gitlab.com": "gitlab",
    "https://accounts.google.com": "google",
    "https://platform.activestate.com/api/v1/oauth/oidc": "activestate",
}


def offline_builtins_toml(*served: DevIssuer) -> str:
    """Issuers-file entries switching off the built-in issuers no local issuer plays.

    Offline (development, tests) their keys cannot be fetched, and the jwks service would
    rightly report itself not ready for want of them.
    """
    taken = {d.issuer for d in served}
    return "".join(
        f'\n[[issuer]]\nissuer = "{iss}"\nprovider = "{prov}"\nenabled = false  # unreachable offline\n'
        for iss, prov in BUILTIN_ISSUERS.items()
        if iss not in taken
    )


async def _main(args: argparse.Namespace) -> None:
    dev = DevIssuer(issuer=args.issuer)
    if args.request_token:
        dev.request_token = args.request_token
    dev.profile = json.loads(args.profile) if args.profile else {}
    async with dev.serve(port=args.port):
        print(json.dumps({"base_url": dev.base_url, "issuer": dev.issuer}), flush=True)  # noqa: T201
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Local development OIDC issuer (plays GitHub Actions).")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--issuer", default=GITHUB_ISSUER)
    parser.add_argument("--request-token", default="", help="bearer secret of the token endpoint")
    parser.add_argument("--profile", default="", help="JSON object of github_claims() defaults")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
