"""The verifier over NATS, with its keys from the JetStream key-value bucket.

The tests write key sets into the bucket exactly as the jwks service does (the shared
contract: key = base64url(issuer) without padding, value = a v1 KeySet sealed for the
verifiers), as the jwks identity, so nothing of the jwks service is needed or imitated, except
where a test plays a jwks service that hangs. The verifier hands what it verified to the
registry, played here by a stand-in that keeps the verified token and answers the gateway.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import nats
import nats.js.errors
import pytest
from deploy.devstack.issuer import DevIssuer, SigningKey
from nats.js.api import KeyValueConfig, StorageType
from structlog.testing import capture_logs
from tests.support.bus import Pipeline, TestBus, verification_pipeline
from tests.support.services import AUDIENCE, running
from tests.support.waiting import bounded, until

from trustpub.messages import Subjects
from trustpub.messages.endpoints import JWKS_REFRESH
from trustpub.messages.v1 import (
    ErrorReply,
    KeySet,
    VerifiedToken,
    encode,
)
from trustpub.runtime import Runtime, load
from trustpub.runtime.keysets import seal
from trustpub.runtime.seal import Seals
from trustpub.verifier.app import setup
from trustpub.verifier.config import Settings


def bucket_key(issuer: str) -> str:
    # Written out here rather than imported: this is the contract with the jwks service.
    return base64.urlsafe_b64encode(issuer.encode()).rstrip(b"=").decode()


@pytest.fixture
async def nc(bus: TestBus, subject_root: str) -> AsyncIterator[nats.NATS]:
    """A connection as the jwks service: the one identity that may write the bucket."""
    async with bus.connection("jwks", subject_root) as client:
        yield client


@pytest.fixture
async def kv(nc, subject_root):
    """The key-value bucket, created as the jwks service creates it (the next lease of the
    root removes it)."""
    js = nc.jetstream()
    bucket = Subjects(subject_root).jwks_bucket
    return await bounded(
        js.create_key_value(KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE))
    )


@pytest.fixture
def env(common, issuers_file) -> dict[str, str]:
    return {**common, "TRUSTPUB_ISSUERS_FILE": str(issuers_file), "TRUSTPUB_REFRESH_TIMEOUT": "1"}


@pytest.fixture
def jwks_seals(common) -> Seals:
    """The jwks service's seal keys (from the bus's secrets directory)."""
    return Seals.load("jwks", Path(common["TRUSTPUB_BUS_SECRETS_DIR"]))


async def put_keys(
    kv, dev: DevIssuer, keys: list[SigningKey] | None = None, *, seals: Seals | None = None
) -> None:
    keyset = KeySet(
        issuer=dev.issuer,
        keys=[k.public_jwk() for k in (dev.keys if keys is None else keys)],
        fetched_at=time.time(),
        checked_at=time.time(),
    )
    assert seals is not None, "key sets in the bucket are sealed by the jwks service"
    await bounded(kv.put(bucket_key(dev.issuer), encode(seal(seals, keyset))))


@pytest.fixture
async def pipeline(common) -> AsyncIterator[Pipeline]:
    async with verification_pipeline(common) as p:
        yield p


async def verify(pipeline: Pipeline, token: str) -> VerifiedToken | ErrorReply:
    return await pipeline.verify(token)


async def eventually(check) -> None:
    await until(check)


async def test_verifies_with_keys_loaded_from_the_bucket(
    env, kv, pipeline, jwks_seals, dev_issuer, subject_root
):
    await put_keys(kv, dev_issuer, seals=jwks_seals)
    rt = Runtime("verifier", load(Settings, env))
    async with running(rt, setup):
        token = dev_issuer.github_token(AUDIENCE)
        reply = await verify(pipeline, token)
        assert isinstance(reply, VerifiedToken), reply
        assert (reply.issuer, reply.provider) == (dev_issuer.issuer, "github")
        assert reply.claims["repository"] == "octo-org/demo"
        assert reply.token_key == reply.claims["jti"]

        # The keys were there before "ready": /readyz says so, per check.
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{rt.ops_port}/readyz"
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                assert resp.status == 200
                assert (await resp.json())["checks"] == {"nats": True, "keys": True}
            async with http.get(
                url.replace("readyz", "metrics"), timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                text = await resp.text()
        assert f'trustpub_verifier_keys{{issuer="{dev_issuer.issuer}"}} 1.0' in text
        assert 'trustpub_verify_total{code="none",outcome="verified",provider="github"} 1.0' in text

        reply = await verify(pipeline, dev_issuer.github_token("pypi"))
        assert reply == ErrorReply(
            code="invalid-token",
            description='aud "pypi" is not this index\'s audience "trustpub-test"',
            # Whose token it was, for the gateway's audit record (never shown to the client).
            context={"issuer": dev_issuer.issuer, "provider": "github"},
        )
        reply = await verify(pipeline, "not-a-jwt")
        assert reply == ErrorReply(
            code="invalid-payload", description="malformed JWT: expected 3 dot-separated segments, found 1"
        )


async def test_waits_for_the_bucket_its_writer_creates_and_follows_its_updates(
    env, nc, pipeline, jwks_seals, dev_issuer, subject_root
):
    """Verifiers only read the bucket: the service starts before the jwks service created
    it, waits for it, and then follows every update."""
    js = nc.jetstream()
    bucket = Subjects(subject_root).jwks_bucket
    rt = Runtime("verifier", load(Settings, env))
    service = running(rt, setup)
    with capture_logs() as logs:
        starting = asyncio.ensure_future(service.__aenter__())
        # Started, and found no bucket to read: it waits, not ready.
        await until(
            lambda: any(e["event"] == "keysets_bucket_missing" for e in logs),
            "the verifier misses the bucket",
        )
    try:
        assert not rt.ready
        kv = await bounded(
            js.create_key_value(KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE))
        )
        await bounded(starting)
        first = dev_issuer.signing_key
        second = SigningKey.generate("dev-2")
        token_1 = dev_issuer.token(dev_issuer_claims(dev_issuer))

        async def first_verifies() -> bool:
            return isinstance(await verify(pipeline, token_1), VerifiedToken)

        await put_keys(kv, dev_issuer, [first], seals=jwks_seals)
        await eventually(first_verifies)

        # Rotation: the issuer adds a key, the jwks service writes the new set.
        await put_keys(kv, dev_issuer, [first, second], seals=jwks_seals)
        token_2 = dev_issuer.token(dev_issuer_claims(dev_issuer), key=second)

        async def second_verifies() -> bool:
            return isinstance(await verify(pipeline, token_2), VerifiedToken)

        await eventually(second_verifies)

        # The issuer withdraws the first key: it stops verifying.
        await put_keys(kv, dev_issuer, [second], seals=jwks_seals)
        token_1b = dev_issuer.token(dev_issuer_claims(dev_issuer))

        async def first_refused() -> bool:
            return isinstance(await verify(pipeline, token_1b), ErrorReply)

        await eventually(first_refused)
        gauge = {"issuer": dev_issuer.issuer}
        assert rt.registry.get_sample_value("trustpub_verifier_keys", gauge) == 1
        assert isinstance(await verify(pipeline, token_2), VerifiedToken)

        # A delete carries no seal (and the jwks service never deletes): refused, counted, and
        # the keys held stay.
        await kv.delete(bucket_key(dev_issuer.issuer))
        refused = {"endpoint": "bucket.jwks", "reason": "delete"}

        async def counted() -> bool:
            return rt.registry.get_sample_value("trustpub_bus_refused_total", refused) == 1

        await eventually(counted)
        assert rt.registry.get_sample_value("trustpub_verifier_keys", gauge) == 1
        assert isinstance(await verify(pipeline, token_2), VerifiedToken)
    finally:
        if starting.done() and not starting.cancelled() and starting.exception() is None:
            await service.__aexit__(None, None, None)
        else:
            starting.cancel()


def dev_issuer_claims(dev: DevIssuer) -> dict:
    from deploy.devstack.issuer import github_claims  # noqa: PLC0415

    return github_claims(AUDIENCE, issuer=dev.issuer)


async def test_garbage_forgeries_and_future_sets_in_the_bucket_are_refused(
    env, kv, pipeline, jwks_seals, dev_issuer, subject_root, tmp_path
):
    """Only what the jwks service sealed, under the issuer's own key and not stamped in the
    future, is applied; everything else is refused, counted, and verifies nothing."""
    attacker = SigningKey.generate("attacker-1")
    now = time.time()

    def keyset(**fields: object) -> KeySet:
        values: dict[str, object] = {
            "issuer": dev_issuer.issuer,
            "keys": [attacker.public_jwk()],
            "fetched_at": now,
            "checked_at": now,
        }
        values.update(fields)
        return KeySet(**values)  # type: ignore[arg-type]

    # A jwks service of another deployment: sealed, but with keys this one does not hold.
    from trustpub.runtime.bus import init_secrets  # noqa: PLC0415

    init_secrets(tmp_path / "other")
    foreign = Seals.load("jwks", tmp_path / "other")
    entries = {
        "not json": b"{not json",
        "plain key set": encode(keyset()),
        "foreign seal": encode(seal(foreign, keyset())),
        "ten years ahead": encode(seal(jwks_seals, keyset(fetched_at=now + 10 * 365 * 86400))),
    }
    for value in entries.values():
        await bounded(kv.put(bucket_key(dev_issuer.issuer), value))
    await bounded(kv.put("not.base64", b"x"))
    await bounded(kv.put(bucket_key("not an issuer"), b"x"))
    # Sealed properly, but for an issuer nobody configured.
    evil = KeySet(issuer="https://evil.test", keys=[attacker.public_jwk()], fetched_at=now)
    await bounded(kv.put(bucket_key("https://evil.test"), encode(seal(jwks_seals, evil))))
    rt = Runtime("verifier", load(Settings, env))
    async with running(rt, setup):
        assert await rt.checks["keys"]()
        # The last entry of the issuer (ten years ahead) was refused: no keys held for it.
        assert not rt.registry.get_sample_value("trustpub_verifier_keys", {"issuer": dev_issuer.issuer})
        for reason in ("future",):
            labels = {"endpoint": "bucket.jwks", "reason": reason}
            assert rt.registry.get_sample_value("trustpub_bus_refused_total", labels) == 1
        forged = dev_issuer.token(dev_issuer_claims(dev_issuer), key=attacker)
        assert isinstance(await verify(pipeline, forged), ErrorReply)
        await put_keys(kv, dev_issuer, seals=jwks_seals)

        async def verifies() -> bool:
            return isinstance(await verify(pipeline, dev_issuer.github_token(AUDIENCE)), VerifiedToken)

        await eventually(verifies)
        # A later real refresh is taken (the forged future set did not outrank it), and the
        # attacker's key verifies nothing.
        assert isinstance(
            await verify(pipeline, dev_issuer.token(dev_issuer_claims(dev_issuer), key=attacker)), ErrorReply
        )


async def test_unknown_kid_without_a_jwks_service_is_unavailable(
    env, kv, pipeline, jwks_seals, dev_issuer, subject_root
):
    await put_keys(kv, dev_issuer, seals=jwks_seals)
    rt = Runtime("verifier", load(Settings, env))
    async with running(rt, setup):
        rotated = SigningKey.generate("dev-rotated")
        token = dev_issuer.token(dev_issuer_claims(dev_issuer), key=rotated)
        with capture_logs() as logs:
            reply = await verify(pipeline, token)
        assert reply == ErrorReply(
            code="unavailable",
            description=f"keys of {dev_issuer.issuer} are unavailable",
            context={"issuer": dev_issuer.issuer, "provider": "github"},
        )
        # Nobody serves the refresh (asked again until the refresh timeout, in case one starts).
        [failed] = [e for e in logs if e["event"] == "key_refresh_failed"]
        assert failed["reason"] == "no jwks.refresh service is running"
        labels = {"issuer": dev_issuer.issuer, "result": "unavailable"}
        assert rt.registry.get_sample_value("trustpub_verifier_key_refresh_total", labels) == 1


async def test_hanging_jwks_service_is_bounded_by_the_refresh_timeout(
    env, kv, nc, pipeline, jwks_seals, dev_issuer, subject_root
):
    await put_keys(kv, dev_issuer, seals=jwks_seals)

    # A jwks service that takes requests and never answers (fault injection).
    async def never_answer(_msg) -> None:
        pass

    silent = await nc.subscribe(
        JWKS_REFRESH.subject(subject_root), queue=JWKS_REFRESH.queue(subject_root), cb=never_answer
    )
    await nc.flush()
    # Long enough that the good token below is answered while the refresh still waits, however
    # loaded the machine; below the gateway's deadline for the slow one (tests/support/bus.py).
    refresh_timeout = 3.0
    rt = Runtime("verifier", load(Settings, {**env, "TRUSTPUB_REFRESH_TIMEOUT": f"{refresh_timeout:g}"}))
    try:
        async with running(rt, setup):
            rotated = SigningKey.generate("dev-rotated")
            token = dev_issuer.token(dev_issuer_claims(dev_issuer), key=rotated)
            good = dev_issuer.github_token(AUDIENCE)
            asked = asyncio.get_running_loop().time()
            with capture_logs() as logs:
                slow = asyncio.ensure_future(verify(pipeline, token))
                # A request waiting for keys does not hold up the others: answered while the
                # refresh still waits.
                assert isinstance(await verify(pipeline, good), VerifiedToken)
                assert not slow.done()
                reply = await bounded(slow)
            elapsed = asyncio.get_running_loop().time() - asked
            assert reply == ErrorReply(
                code="unavailable",
                description=f"keys of {dev_issuer.issuer} are unavailable",
                context={"issuer": dev_issuer.issuer, "provider": "github"},
            )
            # Cut by the refresh timeout (no upper bound on the time: a loaded machine
            # stretches any duration).
            [failed] = [e for e in logs if e["event"] == "key_refresh_failed"]
            assert failed["reason"].startswith("jwks.refresh did not answer within")
            assert elapsed >= 0.9 * refresh_timeout
    finally:
        await silent.unsubscribe()
