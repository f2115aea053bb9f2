"""The world of a keys test: two local issuers, the real jwks and verifier services, clocks.

Both services run in-process with their real ``setup`` (each its own Runtime and NATS
connection, on this test's subject root); the only stand-ins are the identity providers,
played by :class:`DevIssuer` over real HTTP with real keys. Clocks are moved, not waited for:
the jwks service and the verifier each get one (``jwks_clock``, ``verifier_clock``);
:meth:`World.advance` moves both.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats.js.errors
from aiohttp import web
from deploy.devstack.issuer import DevIssuer, SigningKey
from nats.aio.client import Client
from tests.support.bus import ADMIN, Pipeline, TestBus, verification_pipeline
from tests.support.services import AUDIENCE, running
from tests.support.waiting import WAIT_S, Clock, bounded
from tests.support.waiting import until as eventually

from trustpub.jwks.app import setup_with as jwks_setup
from trustpub.jwks.config import Settings as JwksSettings
from trustpub.jwks.keysets import KeySets
from trustpub.messages import Subjects
from trustpub.messages.endpoints import JWKS_REFRESH
from trustpub.messages.keys import kv_key
from trustpub.messages.v1 import ErrorReply, KeySet, RefreshRequest
from trustpub.runtime import Runtime, load
from trustpub.runtime.keysets import open_sealed, unseal
from trustpub.runtime.seal import Seals
from trustpub.verifier.app import setup_with as verifier_setup
from trustpub.verifier.config import Settings as VerifierSettings

COOLDOWN = 60.0  # the default refresh_cooldown; tests move the clocks past it
OTHER_ISSUER = "https://gitlab.example.test"
# Built-in issuers that would be fetched from the internet: switched off in the issuers file,
# as `make up` does, so that they do not count for readiness.
OFFLINE = (
    ("https://gitlab.com", "gitlab"),
    ("https://accounts.google.com", "google"),
    ("https://platform.activestate.com/api/v1/oauth/oidc", "activestate"),
)


class IssuerServer:
    """Serves a DevIssuer on loopback; ``stop`` makes it refuse connections (the port is
    kept for ``start`` again). A handler left hanging is cut after 0.2 s at stop."""

    def __init__(self, dev: DevIssuer) -> None:
        self.dev = dev
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(self.dev.app(), access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.dev.base_url = f"http://127.0.0.1:{self.port}"
        self._runner = runner

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@dataclass(frozen=True)
class Verdict:
    """What the verifier answered: "verified", or an error code, and the description."""

    code: str
    description: str = ""
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.code == "verified"


@dataclass
class World:
    dev: DevIssuer  # plays GitHub Actions' issuer
    other: DevIssuer  # a self-managed GitLab, whose tokens must be unaffected
    servers: dict[str, IssuerServer]
    tmp: Path
    common: dict[str, str]
    bus: TestBus
    jwks_clock: Clock = field(default_factory=Clock)
    verifier_clock: Clock = field(default_factory=Clock)
    attacker: SigningKey = field(default_factory=lambda: SigningKey.generate("attacker"))
    _asking: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _pipeline: Pipeline | None = None
    _starting: asyncio.Lock = field(default_factory=asyncio.Lock)
    _keysets: dict[Runtime, KeySets] = field(default_factory=dict)  # of each running jwks service

    def __post_init__(self) -> None:
        self.verifier_clock.t = self.jwks_clock.t  # the same time until a test moves one

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.common["TRUSTPUB_SUBJECT_ROOT"])

    def advance(self, seconds: float) -> None:
        self.jwks_clock.advance(seconds)
        self.verifier_clock.advance(seconds)

    # -- configuration ----------------------------------------------------------------

    def issuers_file(self, *, direct: bool = False, algorithms: tuple[str, ...] = ()) -> Path:
        """Both issuers on loopback (discovery, or ``direct``: the dev issuer's JWKS URL)."""
        dev = self.dev
        text = self.other.issuers_toml("gitlab") + "\n"
        if direct:
            text += (
                f'[[issuer]]\nissuer = "{dev.issuer}"\nprovider = "github"\n'
                f'jwks_url = "{dev.base_url}/.well-known/jwks"\nallow_loopback_http = true\n'
            )
        else:
            text += dev.issuers_toml()
        if algorithms:
            text += "algorithms = [" + ", ".join(f'"{a}"' for a in algorithms) + "]\n"
        for iss, provider in OFFLINE:
            text += f'\n[[issuer]]\nissuer = "{iss}"\nprovider = "{provider}"\nenabled = false\n'
        path = self.tmp / f"issuers-{uuid.uuid4().hex[:8]}.toml"
        path.write_text(text)
        return path

    def env(self, issuers_file: Path | None = None, **overrides: str) -> dict[str, str]:
        env = {
            **self.common,
            "TRUSTPUB_ISSUERS_FILE": str(issuers_file or self.issuers_file()),
            "TRUSTPUB_FETCH_TIMEOUT": "1",
            # Above the jwks service's worst case (a fetch, or waiting for another replica's).
            "TRUSTPUB_REFRESH_TIMEOUT": "3",
        }
        env.update({f"TRUSTPUB_{k.upper()}": v for k, v in overrides.items()})
        return env

    # -- services ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def jwks(self, env: dict[str, str] | None = None) -> AsyncIterator[Runtime]:
        rt = Runtime("jwks", load(JwksSettings, env or self.env()))
        setup = jwks_setup(now=self.jwks_clock, keysets_to=lambda ks: self._keysets.__setitem__(rt, ks))
        try:
            async with running(rt, setup) as started:
                yield started
        finally:
            self._keysets.pop(rt, None)

    @contextlib.asynccontextmanager
    async def verifier(self, env: dict[str, str] | None = None) -> AsyncIterator[Runtime]:
        rt = Runtime("verifier", load(VerifierSettings, env or self.env()))
        async with running(rt, verifier_setup(now=self.verifier_clock)) as started:
            yield started

    @contextlib.asynccontextmanager
    async def both(self, env: dict[str, str] | None = None) -> AsyncIterator[tuple[Runtime, Runtime]]:
        """The jwks service (its start fetch landed, where an issuer is up), then a verifier."""
        env = env or self.env()
        async with self.jwks(env) as jwks:
            await self.settled(jwks)
            async with self.verifier(env) as verifier:
                yield jwks, verifier

    async def settled(self, jwks: Runtime, timeout: float = WAIT_S) -> None:
        """Wait until the jwks service's start fetch of each issuer has finished (stored and
        announced, or failed) and no fetch is in flight. Not "a set is in the bucket": the
        fetch that stored it still announces the change, and a refresh asked meanwhile joins
        that fetch and gets its result, however far the test has moved the clocks since."""
        await bounded(self._keysets[jwks].settled(), timeout)

    # -- asking -----------------------------------------------------------------------

    async def verify(self, rt: Runtime, token: str) -> Verdict:
        """Ask the verifier over NATS, as the gateway does (the running verifier ``rt``)."""
        assert rt.ready
        async with self._starting:  # one pipeline: its registry keeps what the gateway asks for
            if self._pipeline is None:
                self._pipeline = await self._asking.enter_async_context(verification_pipeline(self.common))
        reply = await self._pipeline.verify(token)
        if isinstance(reply, ErrorReply):
            return Verdict(reply.code, reply.description)
        return Verdict("verified", claims=reply.claims)

    def token(self, dev: DevIssuer | None = None, *, key: SigningKey | None = None, kid: str = "") -> str:
        """A fresh token of ``dev`` (the GitHub issuer by default) signed with ``key``."""
        dev = dev or self.dev
        key = key or dev.signing_key
        header = {"alg": key.alg, "kid": kid or key.kid, "typ": "JWT"}
        return dev.token(dev_claims(dev), key=key, header=header)

    def forged(self, dev: DevIssuer | None = None) -> str:
        """A token naming a random kid, validly signed by the attacker's key."""
        return self.token(dev, key=self.attacker, kid=uuid.uuid4().hex)

    async def refresh(self, verifier: Runtime, request: RefreshRequest) -> KeySet:
        """``jwks.refresh`` as the verifier asks it: the key set answered, its seal checked."""
        sealed = await verifier.call(JWKS_REFRESH, request, deadline=time.time() + WAIT_S)
        return open_sealed(verifier.seals, kv_key(request.issuer), sealed, now=self.verifier_clock)

    async def close(self) -> None:
        await self._asking.aclose()

    def nats(self) -> contextlib.AbstractAsyncContextManager[Client]:
        """The suite's own identity with the verifier's inbox: it may ask for refreshes and
        read (and, where a test says so, write) the bucket."""
        return self.bus.connection(ADMIN, self.subjects.root, inbox_of="verifier")

    async def stored(self, nc: Client, issuer: str) -> KeySet | None:
        kv = await bounded(nc.jetstream().key_value(self.subjects.jwks_bucket))
        try:
            entry = await bounded(kv.get(kv_key(issuer)))
        except nats.js.errors.KeyNotFoundError:
            return None
        assert entry.value is not None
        seals = Seals.load("verifier", Path(self.common["TRUSTPUB_BUS_SECRETS_DIR"]))
        return unseal(seals, kv_key(issuer), entry.value, now=self.verifier_clock)


def dev_claims(dev: DevIssuer) -> dict[str, Any]:
    from deploy.devstack.issuer import github_claims  # noqa: PLC0415

    return github_claims(AUDIENCE, issuer=dev.issuer)


def kids(keyset: KeySet | None) -> list[str]:
    return [] if keyset is None else [k["kid"] for k in keyset.keys]


def sample(rt: Runtime, name: str, **labels: str) -> float | None:
    return rt.registry.get_sample_value(name, labels)


def refreshes(rt: Runtime, issuer: str, result: str) -> float:
    return sample(rt, "trustpub_jwks_refresh_total", issuer=issuer, result=result) or 0.0


async def until(cond: Callable[[], bool], timeout: float = WAIT_S) -> None:
    await eventually(cond, timeout=timeout)


async def readyz(rt: Runtime) -> tuple[int, dict[str, Any]]:
    """What a probe sees on the service's ops port."""
    timeout = aiohttp.ClientTimeout(total=WAIT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(f"http://127.0.0.1:{rt.ops_port}/readyz") as resp,
    ):
        return resp.status, await resp.json()
