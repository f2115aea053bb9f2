"""Helpers of the jwks tests: a movable clock, the service in-process, KV and NATS readers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from deploy.devstack.issuer import DevIssuer
from jwcrypto import jwk
from nats.aio.client import Client
from tests.support.bus import ADMIN, TestBus
from tests.support.services import running
from tests.support.waiting import WAIT_S, Clock, bounded
from tests.support.waiting import until as eventually

from trustpub.jwks.app import setup_with
from trustpub.jwks.config import Settings
from trustpub.jwks.keysets import KeySets
from trustpub.messages import Subjects
from trustpub.messages.endpoints import JWKS_REFRESH
from trustpub.messages.keys import kv_key
from trustpub.messages.v1 import ErrorReply, KeySet, RefreshRequest, SealedKeySet, encode
from trustpub.runtime import Runtime, load
from trustpub.runtime.keysets import open_sealed, unseal
from trustpub.runtime.seal import Seals
from trustpub.runtime.service import any_reply

# The other built-in issuers would be fetched from the internet: the tests have one issuer.
OTHER_PROVIDERS = "gitlab,google,activestate"


@dataclass
class JwksTest:
    """What a jwks test works with: the dev issuer, its issuers file, NATS, a clock."""

    dev: DevIssuer
    issuers_file: Path  # discovery document on loopback (the conftest fixture)
    common: dict[str, str]
    bus: TestBus
    root: str
    clock: Clock = field(default_factory=Clock)

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.root)

    @property
    def direct_issuers_file(self) -> Path:
        """Names the dev issuer's JWKS URL (``jwks_url``): no discovery document."""
        return direct_issuers_file(self.issuers_file.parent, self.dev)

    def env(self, issuers_file: Path | None = None, **overrides: str) -> dict[str, str]:
        return jwks_env(self.common, issuers_file or self.issuers_file, **overrides)

    def service(self, env: dict[str, str] | None = None) -> contextlib.AbstractAsyncContextManager[Runtime]:
        return jwks_service(env or self.env(), self.clock)

    @property
    def seals(self) -> Seals:
        """The verifier's seal keys: what checks the jwks service's key sets."""
        return Seals.load("verifier", Path(self.common["TRUSTPUB_BUS_SECRETS_DIR"]))

    def nats(self) -> contextlib.AbstractAsyncContextManager[Client]:
        """The suite's own identity with the verifier's inbox: it may ask for refreshes (as a
        verifier does) and read the bucket directly."""
        return self.bus.connection(ADMIN, self.root, inbox_of="verifier")

    async def ask(self, nc: Client, request: RefreshRequest, timeout: float = WAIT_S) -> KeySet | ErrorReply:
        """``jwks.refresh``: the key set answered (its seal checked, as a verifier does) or the error."""
        reply = await ask(nc, JWKS_REFRESH.subject(self.root), request, timeout)
        if isinstance(reply, SealedKeySet):
            return open_sealed(self.seals, kv_key(request.issuer), reply, now=self.clock)
        assert isinstance(reply, ErrorReply), reply
        return reply

    async def read(self, nc: Client, issuer: str) -> KeySet | None:
        return await read_stored(nc, self.root, issuer, self.seals, self.clock)

    async def stored(
        self, until: Callable[[KeySet], bool] = lambda _: True, timeout: float = WAIT_S
    ) -> KeySet:
        """The dev issuer's set in the bucket, once it satisfies ``until`` and the running
        jwks services have settled (:func:`settled`): a test may then move the clock."""
        async with self.nats() as nc:
            ks = await wait_stored(nc, self.root, self.dev.issuer, until, timeout, self.seals, self.clock)
        await settled()
        return ks


def jwks_env(common: dict[str, str], issuers_file: Path, **overrides: str) -> dict[str, str]:
    env = {
        **common,
        "TRUSTPUB_ISSUERS_FILE": str(issuers_file),
        "TRUSTPUB_DISABLED_PROVIDERS": OTHER_PROVIDERS,
        "TRUSTPUB_FETCH_TIMEOUT": "2",
    }
    env.update({f"TRUSTPUB_{k.upper()}": v for k, v in overrides.items()})
    return env


def direct_issuers_file(tmp_path: Path, dev: DevIssuer) -> Path:
    """An issuers file naming the dev issuer's JWKS URL directly (no discovery)."""
    path = tmp_path / "issuers-direct.toml"
    path.write_text(
        "[[issuer]]\n"
        f'issuer = "{dev.issuer}"\n'
        'provider = "github"\n'
        f'jwks_url = "{dev.base_url}/.well-known/jwks"\n'
        "allow_loopback_http = true\n"
    )
    return path


# The KeySets of each jwks service running in this test (see settled).
_RUNNING: dict[Runtime, KeySets] = {}


@contextlib.asynccontextmanager
async def jwks_service(
    env: dict[str, str], clock: Callable[[], float] | None = None
) -> AsyncIterator[Runtime]:
    rt = Runtime("jwks", load(Settings, env))
    setup = setup_with(now=clock or time.time, keysets_to=lambda ks: _RUNNING.__setitem__(rt, ks))
    try:
        async with running(rt, setup) as started:
            yield started
    finally:
        _RUNNING.pop(rt, None)


async def settled(rt: Runtime | None = None) -> None:
    """Until the jwks service ``rt`` (every running one by default) has finished its start
    fetches and has no fetch in flight. A set in the bucket is not that: the fetch that stored
    it still announces the change, and a refresh asked meanwhile joins that fetch and gets its
    result, however far the test has moved the clock since."""
    services = [_RUNNING[rt]] if rt is not None else list(_RUNNING.values())
    for keysets in services:
        await bounded(keysets.settled())


async def ask(nc: Client, subject: str, msg: msgspec.Struct, timeout: float = WAIT_S) -> Any:
    """Send one request; the decoded reply (a KeySet or an ErrorReply)."""
    reply = await nc.request(subject, encode(msg), timeout=timeout)
    return any_reply(reply.data)


async def read_stored(
    nc: Client, root: str, issuer: str, seals: Seals, now: Callable[[], float] = time.time
) -> KeySet | None:
    """The issuer's entry in the bucket, its seal checked as a verifier checks it."""
    js = nc.jetstream()
    kv = await bounded(js.key_value(Subjects(root).jwks_bucket))
    try:
        entry = await bounded(kv.get(kv_key(issuer)))
    except nats.js.errors.KeyNotFoundError:
        return None
    assert entry.value is not None
    return unseal(seals, kv_key(issuer), entry.value, now=now)


async def wait_stored(
    nc: Client,
    root: str,
    issuer: str,
    until: Callable[[KeySet], bool],
    timeout: float,
    seals: Seals,
    now: Callable[[], float],
) -> KeySet:
    """Poll the bucket until the issuer's entry exists and satisfies ``until``."""
    deadline = time.monotonic() + timeout
    while True:
        ks = await read_stored(nc, root, issuer, seals, now)
        if ks is not None and until(ks):
            return ks
        if time.monotonic() > deadline:
            msg = f"no matching key set for {issuer} after {timeout} s (last: {ks})"
            raise AssertionError(msg)
        await asyncio.sleep(0.02)


async def wait_for(cond: Callable[[], bool], timeout: float = WAIT_S) -> None:
    await eventually(cond, timeout=timeout)


def kids(ks: KeySet) -> list[str]:
    return [k["kid"] for k in ks.keys]


@contextlib.asynccontextmanager
async def redirector(target: str) -> AsyncIterator[str]:
    """A loopback server answering every GET with a 302 to ``target``."""

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound(target)

    app = web.Application()
    app.router.add_get("/{tail:.*}", redirect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_briefly(dev: DevIssuer) -> AsyncIterator[DevIssuer]:
    """Like ``DevIssuer.serve``, but a handler left hanging is cancelled at once on exit.

    ``DevIssuer.serve`` keeps aiohttp's 60 s graceful shutdown, which a "hang" handler
    (asleep for an hour, its client long gone) would use up in full.
    """
    runner = web.AppRunner(dev.app(), access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    dev.base_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield dev
    finally:
        await runner.cleanup()


# -- keys that must be refused ----------------------------------------------------------


def rsa_jwk(kid: str, *, bits: int = 2048, exponent: int = 65537) -> dict[str, Any]:
    priv = rsa.generate_private_key(public_exponent=exponent, key_size=bits)
    out: dict[str, Any] = jwk.JWK.from_pyca(priv.public_key()).export_public(as_dict=True)
    out.update(kid=kid, use="sig", alg="RS256")
    return out


def rsa_private_jwk(kid: str) -> dict[str, Any]:
    priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    out: dict[str, Any] = jwk.JWK.from_pyca(priv).export_private(as_dict=True)
    out.update(kid=kid, use="sig", alg="RS256")
    return out


def ec_jwk(kid: str) -> dict[str, Any]:
    priv = ec.generate_private_key(ec.SECP256R1())
    out: dict[str, Any] = jwk.JWK.from_pyca(priv.public_key()).export_public(as_dict=True)
    out.update(kid=kid, use="sig", alg="ES256")
    return out


def off_curve_jwk(kid: str) -> dict[str, Any]:
    """A P-256 key whose y is moved off the curve (the invalid-curve attack's shape)."""
    good = ec_jwk(kid)
    y = jwk.base64url_decode(good["y"])
    moved = ((int.from_bytes(y, "big") + 1) % (1 << 256)).to_bytes(32, "big")
    good["y"] = jwk.base64url_encode(moved)
    return good


def oct_jwk(kid: str) -> dict[str, Any]:
    return {"kty": "oct", "kid": kid, "k": jwk.base64url_encode(b"0123456789abcdef0123456789abcdef")}
