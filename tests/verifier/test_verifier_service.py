"""The verifier over NATS, with its keys from the JetStream key-value bucket.

The tests write key sets into the bucket exactly as the jwks service does (the shared
contract: key = base64url(issuer) without padding, value = a v1 KeySet), so nothing of the
jwks service is needed or imitated, except where a test plays a jwks service that hangs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import nats
import nats.js.errors
import pytest
from nats.js.api import KeyValueConfig, StorageType
from tests.conftest import AUDIENCE, running

from trustpub.devstack.issuer import DevIssuer, SigningKey
from trustpub.messages import Subjects
from trustpub.messages.v1 import ErrorReply, KeySet, VerifiedToken, VerifyRequest, encode
from trustpub.runtime import Runtime, load
from trustpub.runtime.service import any_reply
from trustpub.verifier.app import setup
from trustpub.verifier.config import Settings


def bucket_key(issuer: str) -> str:
    # Written out here rather than imported: this is the contract with the jwks service.
    return base64.urlsafe_b64encode(issuer.encode()).rstrip(b"=").decode()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[nats.NATS]:
    client = await asyncio.wait_for(nats.connect(nats_url), 10)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def kv(nc, subject_root):
    """The key-value bucket, created as the jwks service creates it; removed afterwards."""
    js = nc.jetstream()
    bucket = Subjects(subject_root).jwks_bucket
    store = await asyncio.wait_for(
        js.create_key_value(KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE)), 10
    )
    yield store
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_key_value(bucket)


@pytest.fixture
def env(common, issuers_file) -> dict[str, str]:
    return {**common, "TRUSTPUB_ISSUERS_FILE": str(issuers_file), "TRUSTPUB_REFRESH_TIMEOUT": "1"}


async def put_keys(kv, dev: DevIssuer, keys: list[SigningKey] | None = None) -> None:
    keyset = KeySet(
        issuer=dev.issuer,
        keys=[k.public_jwk() for k in (dev.keys if keys is None else keys)],
        fetched_at=time.time(),
        checked_at=time.time(),
    )
    await asyncio.wait_for(kv.put(bucket_key(dev.issuer), encode(keyset)), 5)


async def verify(nc, root: str, token: str) -> VerifiedToken | ErrorReply:
    msg = await nc.request(Subjects(root).token_verify, encode(VerifyRequest(token=token)), timeout=5)
    reply = any_reply(msg.data)
    assert isinstance(reply, VerifiedToken | ErrorReply)
    return reply


async def eventually(check, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_verifies_with_keys_loaded_from_the_bucket(env, kv, nc, dev_issuer, subject_root):
    await put_keys(kv, dev_issuer)
    rt = Runtime("verifier", load(Settings, env))
    async with running(rt, setup):
        token = dev_issuer.github_token(AUDIENCE)
        reply = await verify(nc, subject_root, token)
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

        reply = await verify(nc, subject_root, dev_issuer.github_token("pypi"))
        assert reply == ErrorReply(
            code="invalid-token",
            description='aud "pypi" is not this index\'s audience "trustpub-test"',
            # Whose token it was, for the gateway's audit record (never shown to the client).
            context={"issuer": dev_issuer.issuer, "provider": "github"},
        )
        reply = await verify(nc, subject_root, "not-a-jwt")
        assert reply == ErrorReply(
            code="invalid-payload", description="malformed JWT: expected 3 dot-separated segments, found 1"
        )


async def test_creates_the_bucket_and_follows_its_updates(env, nc, dev_issuer, subject_root):
    js = nc.jetstream()
    bucket = Subjects(subject_root).jwks_bucket
    rt = Runtime("verifier", load(Settings, env))
    try:
        async with running(rt, setup):
            # The service started on an empty NATS: it created the bucket itself.
            kv = await asyncio.wait_for(js.key_value(bucket), 5)
            first = dev_issuer.signing_key
            second = SigningKey.generate("dev-2")
            token_1 = dev_issuer.token(dev_issuer_claims(dev_issuer))

            async def first_verifies() -> bool:
                return isinstance(await verify(nc, subject_root, token_1), VerifiedToken)

            await put_keys(kv, dev_issuer, [first])
            await eventually(first_verifies)

            # Rotation: the issuer adds a key, the jwks service writes the new set.
            await put_keys(kv, dev_issuer, [first, second])
            token_2 = dev_issuer.token(dev_issuer_claims(dev_issuer), key=second)

            async def second_verifies() -> bool:
                return isinstance(await verify(nc, subject_root, token_2), VerifiedToken)

            await eventually(second_verifies)

            # The issuer withdraws the first key: it stops verifying.
            await put_keys(kv, dev_issuer, [second])
            token_1b = dev_issuer.token(dev_issuer_claims(dev_issuer))

            async def first_refused() -> bool:
                return isinstance(await verify(nc, subject_root, token_1b), ErrorReply)

            await eventually(first_refused)
            gauge = {"issuer": dev_issuer.issuer}
            assert rt.registry.get_sample_value("trustpub_verifier_keys", gauge) == 1
            assert isinstance(await verify(nc, subject_root, token_2), VerifiedToken)

            # The entry is deleted: the issuer has no keys left in this verifier.
            await kv.delete(bucket_key(dev_issuer.issuer))

            async def gone() -> bool:
                return rt.registry.get_sample_value("trustpub_verifier_keys", gauge) == 0

            await eventually(gone)
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_key_value(bucket)


def dev_issuer_claims(dev: DevIssuer) -> dict:
    from trustpub.devstack.issuer import github_claims  # noqa: PLC0415

    return github_claims(AUDIENCE, issuer=dev.issuer)


async def test_garbage_in_the_bucket_is_skipped(env, kv, nc, dev_issuer, subject_root):
    await asyncio.wait_for(kv.put(bucket_key(dev_issuer.issuer), b"{not json"), 5)
    await asyncio.wait_for(
        kv.put(
            bucket_key("https://evil.test"),
            encode(
                KeySet(
                    issuer="https://evil.test",
                    keys=[SigningKey.generate("e").public_jwk()],
                    fetched_at=time.time(),
                )
            ),
        ),
        5,
    )
    await asyncio.wait_for(kv.put("not.base64", b"x"), 5)
    await asyncio.wait_for(kv.put(bucket_key("not an issuer"), b"x"), 5)
    rt = Runtime("verifier", load(Settings, env))
    async with running(rt, setup):
        assert await rt.checks["keys"]()
        await put_keys(kv, dev_issuer)

        async def verifies() -> bool:
            return isinstance(
                await verify(nc, subject_root, dev_issuer.github_token(AUDIENCE)), VerifiedToken
            )

        await eventually(verifies)


async def test_unknown_kid_without_a_jwks_service_is_unavailable(env, kv, nc, dev_issuer, subject_root):
    await put_keys(kv, dev_issuer)
    rt = Runtime("verifier", load(Settings, env))
    async with running(rt, setup):
        rotated = SigningKey.generate("dev-rotated")
        token = dev_issuer.token(dev_issuer_claims(dev_issuer), key=rotated)
        started = time.monotonic()
        reply = await verify(nc, subject_root, token)
        assert reply == ErrorReply(
            code="unavailable",
            description=f"keys of {dev_issuer.issuer} are unavailable",
            context={"issuer": dev_issuer.issuer, "provider": "github"},
        )
        assert time.monotonic() - started < 1.0  # no responders: answered at once
        labels = {"issuer": dev_issuer.issuer, "result": "unavailable"}
        assert rt.registry.get_sample_value("trustpub_verifier_key_refresh_total", labels) == 1


async def test_hanging_jwks_service_is_bounded_by_the_refresh_timeout(env, kv, nc, dev_issuer, subject_root):
    await put_keys(kv, dev_issuer)

    # A jwks service that takes requests and never answers (fault injection).
    async def never_answer(_msg) -> None:
        pass

    silent = await nc.subscribe(Subjects(subject_root).jwks_refresh, cb=never_answer)
    await nc.flush()
    rt = Runtime("verifier", load(Settings, env))
    try:
        async with running(rt, setup):
            rotated = SigningKey.generate("dev-rotated")
            token = dev_issuer.token(dev_issuer_claims(dev_issuer), key=rotated)
            good = dev_issuer.github_token(AUDIENCE)
            started = time.monotonic()
            slow = asyncio.ensure_future(verify(nc, subject_root, token))
            # A request waiting for keys does not hold up the others.
            assert isinstance(await verify(nc, subject_root, good), VerifiedToken)
            assert time.monotonic() - started < 0.9
            reply = await slow
            elapsed = time.monotonic() - started
            assert reply == ErrorReply(
                code="unavailable",
                description=f"keys of {dev_issuer.issuer} are unavailable",
                context={"issuer": dev_issuer.issuer, "provider": "github"},
            )
            assert 0.9 < elapsed < 2.5  # TRUSTPUB_REFRESH_TIMEOUT=1
    finally:
        await silent.unsubscribe()
