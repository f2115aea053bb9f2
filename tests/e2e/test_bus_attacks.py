"""The bus is a trust boundary: seven attacks on it, against the live stack, all failing.

Each attack is tried by everyone who might hold something: no credentials at all (plain TCP,
and TLS without an nkey), and every service identity, including the gateway's (the one facing
the internet) and the identity that legitimately owns the subject attacked. The test ids read
as a matrix, ``<identity>-<how it fails>``:

- ``connection-refused``: the server speaks no NATS in clear, and wants an nkey over TLS;
- ``permission-violation``: the generated authorization drops the publish or subscription
  (the attacker's connection gets the async error) and the service never sees the message;
- ``refused-by-seal``: NATS lets the message through because the identity owns the subject,
  and the receiving service refuses it (no seal, a made-up MAC, a reply subject outside its
  callers' inboxes), which its ``trustpub_bus_refused_total`` counts;
- ``refused-by-check``: the receiver's other checks hold (the minter checks an upload token's
  signature before a burn, the gateway pins the minter's key ids and checks a token's
  signature before it asks the registry anything).

After each attack the test looks where a user or an operator would: the mint records, the
audit trail, introspection, ``/_/oidc/mint-token`` and ``/_/oidc/jwks``. Where it asserts that
something did not arrive, a legitimate exchange that would have produced it runs first and
every connection involved is flushed.

Two more rogue responders need the identity that owns the subject and answer what no
signature check can catch (the minter's key set without the pinned key; "not revoked" for a
burned token): ``test_6_a_rogue_*_cannot_*``. Processes the attacks need beside the stack (a
gateway without a key cache, a jwks replica without a refresh cooldown) are started by the
test that needs them and stopped after it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec
import nats
import nats.errors
import pytest
from deploy.devstack.issuer import SigningKey
from deploy.devstack.servers import free_port, joined
from deploy.devstack.stack import Stack
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from prometheus_client.parser import text_string_to_metric_families
from tests.support import waiting
from tests.support.bus import ADMIN, TestBus
from tests.support.e2e import Publisher, mint, mints_count
from tests.support.live import metric_value
from tests.support.waiting import WAIT_S, bounded

from trustpub.messages import DEADLINE_HEADER, EXCHANGE_ID_HEADER, Subjects
from trustpub.messages.endpoints import (
    EXCHANGE_FAILED,
    EXCHANGE_SUCCEEDED,
    GATEWAY,
    KEYSETS,
    MINT_REVOKE,
    MINT_STATUS,
    MINTER,
    PUBLISHER_MATCH,
    REGISTRY,
    SERVICES,
    TOKEN_BURN,
    TOKEN_KEYS,
    TOKEN_MINT,
    VERIFIER,
    Endpoint,
    inbox_prefix,
    pair_name,
)
from trustpub.messages.keys import kv_key
from trustpub.messages.text import b64, unb64
from trustpub.messages.v1 import (
    BurnRequest,
    ErrorReply,
    ExchangeEvent,
    KeySet,
    KeysReply,
    MatchRequest,
    MintGrant,
    MintRequest,
    MintStatus,
    MintStatusRequest,
    RevokeRequest,
    SealedKeySet,
    VerifiedToken,
    encode,
)
from trustpub.minter import keys as minter_keys
from trustpub.minter.tokens import Signer
from trustpub.registry import cli
from trustpub.runtime.seal import SEAL_HEADER, parse_ring

ANON_TCP = "anonymous-tcp"  # plain TCP, no credentials
ANON_TLS = "anonymous-tls"  # TLS, no nkey
ATTACKERS = (ANON_TCP, ANON_TLS, *SERVICES)

REFUSED_CONNECTION = "connection-refused"
PERMISSION = "permission-violation"
SEALED = "refused-by-seal"
CHECKED = "refused-by-check"

YEAR = 365 * 86400
# What a service's adapter counts when a caller's identity sends without the caller's seal
# key: its own inbox as the reply subject, the first caller's inbox unsealed, and there with
# a seal naming the legitimate caller and its real key id over a made-up MAC.
FORGED_REQUEST_REASONS = ("reply-subject", "unsealed", "bad-mac")
# Stamped ten years ahead: trusted, such a key set would outrank every real refresh after it.
TEN_YEARS = 10 * YEAR
# Control characters an attacker would put in an audit field to drive an operator's terminal:
# clear screen, set the window title, colour, carriage return, a bidirectional override, DEL.
ESCAPES = "\x1b[2J\x1b]0;owned\x07\x1b[31m\r\u202e\x7f"


def matrix(**owners: str) -> list[Any]:
    """Every attacker, with how its attack fails: ``owners`` names the identities that NATS
    lets through (they own the subject) and what refuses them; everyone else is stopped by
    the server."""
    params = []
    for identity in ATTACKERS:
        anonymous = identity in {ANON_TCP, ANON_TLS}
        outcome = REFUSED_CONNECTION if anonymous else owners.get(identity, PERMISSION)
        params.append(pytest.param(identity, outcome, id=f"{identity}-{outcome}"))
    return params


# --- waiting, bounded ----------------------------------------------------------------------------


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``check`` until it holds; fail saying ``what`` was awaited."""
    await waiting.until(check, what, timeout=timeout)


# --- what the services count ----------------------------------------------------------------------


async def metric(stack: Stack, service: str, sample: str, **labels: str) -> float:
    """The sum of a service's samples named ``sample`` whose labels include ``labels``."""
    return metric_value(await asyncio.to_thread(stack.metrics, service), sample, **labels)


async def refusals(stack: Stack, service: str, label: str) -> dict[str, float]:
    """``trustpub_bus_refused_total`` of ``service`` for one endpoint, bucket or event, by reason."""
    text = await asyncio.to_thread(stack.metrics, service)
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "trustpub_bus_refused_total" and s.labels.get("endpoint") == label:
                counts[s.labels["reason"]] = s.value
    return counts


async def refused(
    stack: Stack, service: str, label: str, before: dict[str, float], reasons: Iterable[str]
) -> None:
    """Wait until ``service`` has counted one more refusal for each of ``reasons``."""
    wanted = tuple(reasons)

    async def counted() -> bool:
        now = await refusals(stack, service, label)
        return all(now.get(r, 0) >= before.get(r, 0) + 1 for r in wanted)

    await until(counted, f"{service} counts {wanted} in trustpub_bus_refused_total{{endpoint={label!r}}}")


# --- attackers ------------------------------------------------------------------------------------


def pub_frame(subject: str, data: bytes, reply: str = "") -> bytes:
    head = f"PUB {subject} {reply} {len(data)}" if reply else f"PUB {subject} {len(data)}"
    return head.encode() + b"\r\n" + data + b"\r\n"


def sub_frame(subject: str, sid: int, queue: str = "") -> bytes:
    return (f"SUB {subject} {queue} {sid}" if queue else f"SUB {subject} {sid}").encode() + b"\r\n"


async def plaintext_attempt(url: str, frames: bytes) -> bytes:
    """Speak NATS in clear to the server, attack included; what came back before it hung up."""
    address = urlsplit(url)
    reader, writer = await bounded(asyncio.open_connection(address.hostname, address.port))
    received = b""
    try:
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\n' + frames + b"PING\r\n")
        with contextlib.suppress(ConnectionError):
            await bounded(writer.drain())
            while chunk := await bounded(reader.read(65536)):
                received += chunk
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await bounded(writer.wait_closed())
    return received


async def _ignore(_: Exception) -> None:
    pass


async def refused_connection(bus: TestBus, identity: str, frames: bytes = b"") -> bool:
    """For the anonymous attackers: prove the server refuses them (True); False for a service
    identity, which connects."""
    if identity == ANON_TCP:
        # TLS comes first: what a client says in clear is a broken handshake, and the server
        # closes the connection without a word of NATS (no INFO, no PONG, no MSG).
        received = await plaintext_attempt(bus.url, frames)
        for op in (b"INFO", b"PONG", b"MSG", b"+OK", b"-ERR"):
            assert op not in received, received[:200]
        return True
    if identity == ANON_TLS:
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
            async with joined(bus.url, 5, tls=bus.tls(), tls_handshake_first=True, error_cb=_ignore):
                pass
        return True
    return False


class Capture:
    """Messages a subscription received."""

    def __init__(self) -> None:
        self.msgs: list[Msg] = []

    async def add(self, msg: Msg) -> None:
        self.msgs.append(msg)

    def containing(self, needle: str) -> list[Msg]:
        return [m for m in self.msgs if needle.encode() in m.data]


class Attacker:
    """A connection as a service identity; the server's async errors are recorded."""

    def __init__(self, identity: str, root: str) -> None:
        self.identity = identity
        self.root = root
        self.errors: list[str] = []
        self.nc: NatsClient | None = None

    async def record_error(self, exc: Exception) -> None:
        self.errors.append(str(exc).lower())

    @property
    def conn(self) -> NatsClient:
        assert self.nc is not None
        return self.nc

    def inbox(self) -> str:
        """A reply subject under this identity's own inbox (the only one it may read)."""
        return f"{inbox_prefix(self.root, self.identity)}.attack-{uuid.uuid4().hex}"

    async def listen(self, subject: str, queue: str = "") -> Capture:
        capture = Capture()
        await self.conn.subscribe(subject, queue=queue, cb=capture.add)
        return capture

    async def flush(self) -> None:
        await bounded(self.conn.flush())

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e]

    def violated(self, op: str, subject: str) -> bool:
        needle = f'permissions violation for {op} to "{subject.lower()}"'
        return any(needle in e for e in self.errors)

    async def expect_violation(self, op: str, *subjects: str) -> None:
        """The server refused ``op`` ("publish" or "subscription") on each of ``subjects``."""
        await self.flush()  # the server answers in order: its -ERR comes before the PONG
        for subject in subjects:

            async def seen(subject: str = subject) -> bool:
                return self.violated(op, subject)

            await until(seen, f"the server refuses {self.identity} {op} to {subject}")


@contextlib.asynccontextmanager
async def attacking(bus: TestBus, identity: str, root: str) -> AsyncIterator[Attacker]:
    attacker = Attacker(identity, root)
    attacker.nc = await bus.connect(identity, root, error_cb=attacker.record_error, allow_reconnect=False)
    try:
        yield attacker
    finally:
        with contextlib.suppress(Exception):
            await bounded(attacker.conn.close())


@pytest.fixture
async def admin(bus, stack_root) -> AsyncIterator[NatsClient]:
    """The suite's own unrestricted identity, watching what the attackers cannot."""
    async with bus.connection(ADMIN, stack_root) as nc:
        yield nc


# --- forging ---------------------------------------------------------------------------------------


def ring_kid(bus: TestBus, sender: str, receiver: str) -> str:
    """The id of the key that seals ``sender`` -> ``receiver``: it travels in every seal, so an
    attacker knows it; the secret is what it lacks."""
    name = pair_name(sender, receiver)
    return parse_ring(name, (bus.dev.secrets / f"{name}.keys").read_text()).keys[0][0]


def made_up_mac() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


class Forged:
    """Requests to a sealed endpoint, as a thief of its caller's nkey (not its seal key) sends
    them; where any answer would go."""

    def __init__(
        self,
        bus: TestBus,
        endpoint: Endpoint[Any, Any],
        message: msgspec.Struct,
        root: str,
        exchange_id: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.subject = endpoint.subject(root)
        self.data = encode(message)
        self.exchange_id = exchange_id or f"attack-{uuid.uuid4().hex}"
        # The inbox of the pipeline's first caller (the gateway): the only reply subject the
        # server accepts. Nobody but the gateway could read an answer there; the admin watches.
        self.first_inbox = f"{inbox_prefix(root, GATEWAY)}.attack-{uuid.uuid4().hex}"
        caller = endpoint.callers[0]
        self.fake_seal = f"v1 {caller} {ring_kid(bus, caller, endpoint.server)} {made_up_mac()}"
        self.own: Capture | None = None
        self.first: Capture | None = None

    def headers(self) -> dict[str, str]:
        return {DEADLINE_HEADER: f"{time.time() + 5:.3f}", EXCHANGE_ID_HEADER: self.exchange_id}

    def plaintext(self) -> bytes:
        return pub_frame(self.subject, self.data, f"{self.first_inbox}.plain")

    async def send(self, attacker: Attacker, admin: NatsClient) -> None:
        own_inbox = attacker.inbox()
        self.own = await attacker.listen(f"{own_inbox}.>")
        await attacker.flush()
        self.first = Capture()
        await admin.subscribe(f"{self.first_inbox}.>", cb=self.first.add)
        await bounded(admin.flush())
        nc = attacker.conn
        # One reply subject per request: the server lets a responder answer each one once.
        await nc.publish(self.subject, self.data, reply=f"{own_inbox}.own", headers=self.headers())
        unsealed = f"{self.first_inbox}.unsealed"
        await nc.publish(self.subject, self.data, reply=unsealed, headers=self.headers())
        sealed = {**self.headers(), SEAL_HEADER: self.fake_seal}
        await nc.publish(self.subject, self.data, reply=f"{self.first_inbox}.sealed", headers=sealed)
        await attacker.flush()

    async def expect(self, expected: str, attacker: Attacker, stack: Stack, before: dict[str, float]) -> None:
        """Stopped by the server, or refused by the service for each of the three forgeries."""
        server, label = self.endpoint.server, self.endpoint.label
        if expected == PERMISSION:
            await attacker.expect_violation("publish", self.subject)
            # Never delivered: the service counted nothing.
            assert await refusals(stack, server, label) == before
        else:
            assert expected == SEALED
            await refused(stack, server, label, before, FORGED_REQUEST_REASONS)
            assert attacker.violations() == []

    async def nothing_answered(self, attacker: Attacker, admin: NatsClient) -> None:
        """Called after a legitimate exchange through the same service: no answer came."""
        await attacker.flush()
        await bounded(admin.flush())
        assert self.own is not None
        assert self.first is not None
        assert self.own.msgs == [], [m.data[:200] for m in self.own.msgs]
        assert self.first.msgs == [], [m.data[:200] for m in self.first.msgs]


async def legit_mint(http, stack: Stack, token: str) -> str:
    status, body, _ = await bounded(mint(http, stack, token))
    assert status == 200, body
    return str(body["token"])


def claims_of(upload_token: str) -> dict[str, Any]:
    return json.loads(unb64(upload_token.removeprefix("trustpub-").split(".")[1]))


async def introspect(http, base_url: str, token: str) -> dict[str, Any]:
    async with http.post(f"{base_url}/_/oidc/introspect", json={"token": token}) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def jwks_served(http, base_url: str) -> tuple[int, Any]:
    async with http.get(f"{base_url}/_/oidc/jwks") as resp:
        return resp.status, await resp.json(content_type=None)


def foreign_signer() -> Signer:
    """An attacker's own minter key, with the stack's token issuer and audience."""
    return Signer(
        minter_keys.parse(minter_keys.generate()),
        prefix="trustpub-",
        issuer="trustpub",
        audience="trustpub-index",
    )


async def audit_rows(database_url: str, where: str, *args: Any) -> int:
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM audit_events WHERE {where}", *args))  # noqa: S608  (the tests' own clauses)
    finally:
        await conn.close()


# --- 1. token.mint ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("identity", "expected"), matrix(registry=SEALED))
async def test_1_a_mint_request_does_not_come_back_signed(
    identity, expected, bus, stack, stack_root, stack_env, http, publisher, admin
):
    """The minter signs whatever grant reaches its handler, so nothing but the registry's
    seal over a committed grant may reach it: a one-year token for any projects, asked by
    anyone, comes back to no one."""
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    now = int(time.time())
    grant = MintGrant(
        mint_id=str(uuid.uuid4()),
        publisher_id=str(uuid.uuid4()),
        projects=[publisher.project, "numpy", "requests"],
        issued_at=now,
        expires_at=now + YEAR,
        issuer=publisher.issuer.issuer,
        provider="github",
    )
    forged = Forged(bus, TOKEN_MINT, MintRequest(grant=grant), stack_root)
    mints = await mints_count(db)
    signed = await metric(stack, MINTER, "trustpub_tokens_minted_total")
    before = await refusals(stack, MINTER, TOKEN_MINT.label)

    if await refused_connection(bus, identity, forged.plaintext()):
        assert expected == REFUSED_CONNECTION
        await legit_mint(http, stack, publisher.token())
    else:
        async with attacking(bus, identity, stack_root) as attacker:
            await forged.send(attacker, admin)
            await forged.expect(expected, attacker, stack, before)
            assert await metric(stack, MINTER, "trustpub_tokens_minted_total") == signed
            # The minter signs for the legitimate pipeline meanwhile; the forgeries got nothing.
            await legit_mint(http, stack, publisher.token())
            await forged.nothing_answered(attacker, admin)
    # Exactly one token signed and recorded: the legitimate one.
    assert await metric(stack, MINTER, "trustpub_tokens_minted_total") == signed + 1
    assert await mints_count(db) == mints + 1


# --- 2. publisher.match -------------------------------------------------------------------------------


@pytest.mark.parametrize(("identity", "expected"), matrix(verifier=SEALED))
async def test_2_a_forged_verified_token_gets_no_grant_and_no_audit_row(
    identity, expected, bus, stack, stack_root, stack_env, http, publisher, admin
):
    """``publisher.match`` trusts that the verifier verified the token it hands on; a
    "verified" token made up by anyone else, for a real publisher, claims no token id, records
    no mint and writes no audit row."""
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    claims = publisher.claims()
    verified = VerifiedToken(
        issuer=publisher.issuer.issuer,
        provider="github",
        claims=claims,
        token_key=claims["jti"],
        expires_at=claims["exp"],
        token_hash=hashlib.sha256(b"never an OIDC token").hexdigest(),
    )
    exchange_id = f"attack-{uuid.uuid4().hex}"
    match = MatchRequest(exchange_id=exchange_id, token=verified)
    forged = Forged(bus, PUBLISHER_MATCH, match, stack_root, exchange_id)
    mints = await mints_count(db)
    before = await refusals(stack, REGISTRY, PUBLISHER_MATCH.label)

    if await refused_connection(bus, identity, forged.plaintext()):
        assert expected == REFUSED_CONNECTION
        await legit_mint(http, stack, publisher.token(jti=claims["jti"]))
    else:
        async with attacking(bus, identity, stack_root) as attacker:
            await forged.send(attacker, admin)
            await forged.expect(expected, attacker, stack, before)
            assert await mints_count(db) == mints
            # The forged token's id was not claimed: a real token with it still exchanges.
            await legit_mint(http, stack, publisher.token(jti=claims["jti"]))
            await forged.nothing_answered(attacker, admin)
    assert await mints_count(db) == mints + 1
    assert await audit_rows(db, "exchange_id = $1", forged.exchange_id) == 0


# --- 3. mint.revoke and token.burn -----------------------------------------------------------------


@pytest.mark.parametrize(("identity", "expected"), matrix(minter=SEALED))
async def test_3_revoking_someone_elses_token_on_the_bus_does_not_revoke_it(
    identity, expected, bus, stack, stack_root, http, publisher, admin
):
    """The registry revokes a mint record only when the minter, having checked the upload
    token, asks under its seal: another user's freshly minted token stays active."""
    victim = await legit_mint(http, stack, publisher.token())
    assert (await introspect(http, stack.base_url, victim))["active"] is True
    forged = Forged(bus, MINT_REVOKE, RevokeRequest(mint_id=claims_of(victim)["jti"]), stack_root)
    before = await refusals(stack, REGISTRY, MINT_REVOKE.label)

    if await refused_connection(bus, identity, forged.plaintext()):
        assert expected == REFUSED_CONNECTION
    else:
        async with attacking(bus, identity, stack_root) as attacker:
            await forged.send(attacker, admin)
            await forged.expect(expected, attacker, stack, before)
            # A legitimate burn goes through the same endpoint meanwhile, and takes effect.
            own = await legit_mint(http, stack, publisher.token())
            async with http.post(f"{stack.base_url}/_/oidc/burn-token", json={"token": own}) as resp:
                assert resp.status == 202, await resp.text()
            assert await introspect(http, stack.base_url, own) == {"active": False}
            await forged.nothing_answered(attacker, admin)
    assert (await introspect(http, stack.base_url, victim))["active"] is True


def tampered(token: str) -> str:
    """``token`` with another project in its claims, its signature kept."""
    prefix, rest = "trustpub-", token.removeprefix("trustpub-")
    header, payload, signature = rest.split(".")
    claims = json.loads(unb64(payload))
    claims["projects"] = [*claims["projects"], "someone-elses-project"]
    body = b64(json.dumps(claims, separators=(",", ":")).encode()).decode()
    return f"{prefix}{header}.{body}.{signature}"


def resigned(token: str) -> str:
    """``token``'s claims (its mint id included) signed with an attacker's own key."""
    claims = claims_of(token)
    grant = MintGrant(
        mint_id=claims["jti"],
        publisher_id=claims["sub"],
        projects=claims["projects"],
        issued_at=claims["iat"],
        expires_at=claims["exp"],
        provenance=claims.get("provenance", {}),
    )
    return foreign_signer().mint(grant)


@pytest.mark.parametrize(("identity", "expected"), matrix(gateway=CHECKED))
async def test_3_burning_without_the_real_token_revokes_nothing(
    identity, expected, bus, stack, stack_root, http, publisher
):
    """``token.burn`` is the gateway's to call, but the minter burns only a token it signed:
    garbage, the victim's token with its claims changed, or its claims signed with another key
    all come back invalid-token, and the victim's token stays active."""
    victim = await legit_mint(http, stack, publisher.token())
    burns = [BurnRequest(token=t) for t in ("garbage", tampered(victim), resigned(victim))]
    subject = TOKEN_BURN.subject(stack_root)
    frames = b"".join(pub_frame(subject, encode(b), "_INBOX.x") for b in burns)
    before = await refusals(stack, MINTER, TOKEN_BURN.label)

    if await refused_connection(bus, identity, frames):
        assert expected == REFUSED_CONNECTION
    else:
        async with attacking(bus, identity, stack_root) as attacker:
            inbox = attacker.inbox()
            answers = await attacker.listen(f"{inbox}.>")
            await attacker.flush()
            for n, burn in enumerate(burns):
                headers = {DEADLINE_HEADER: f"{time.time() + 5:.3f}"}
                await attacker.conn.publish(subject, encode(burn), reply=f"{inbox}.{n}", headers=headers)
            if expected == PERMISSION:
                await attacker.expect_violation("publish", subject)
                own = await legit_mint(http, stack, publisher.token())
                async with http.post(f"{stack.base_url}/_/oidc/burn-token", json={"token": own}) as resp:
                    assert resp.status == 202, await resp.text()
                await attacker.flush()
                assert answers.msgs == []
            else:
                assert expected == CHECKED

                async def all_answered() -> bool:
                    return len(answers.msgs) == len(burns)

                await until(all_answered, "the minter answers every burn")
                for msg in answers.msgs:
                    reply = msgspec.json.decode(msg.data, type=ErrorReply)
                    assert reply.code == "invalid-token", reply
                assert attacker.violations() == []
    assert await refusals(stack, MINTER, TOKEN_BURN.label) == before
    assert (await introspect(http, stack.base_url, victim))["active"] is True


# --- 4. the key-set bucket ---------------------------------------------------------------------------


@pytest.fixture
def attacker_key() -> SigningKey:
    return SigningKey.generate(f"attacker-{uuid.uuid4().hex[:8]}")


def planted(issuer: str, real: list[dict[str, Any]], extra: dict[str, Any]) -> KeySet:
    ahead = time.time() + TEN_YEARS
    return KeySet(issuer=issuer, keys=[*real, extra], fetched_at=ahead, checked_at=ahead)


async def attacker_token_refused(http, stack: Stack, publisher: Publisher, key: SigningKey, db: str) -> None:
    mints = await mints_count(db)
    status, body, _ = await bounded(mint(http, stack, publisher.issuer.token(publisher.claims(), key=key)))
    assert status == 422, body
    assert body["errors"][0]["code"] == "invalid-token", body
    assert await mints_count(db) == mints


async def bucket_kids(admin: NatsClient, root: str, issuer: str) -> set[str]:
    """The key ids of ``issuer``'s entry in the bucket, as the admin reads it (unchecked)."""
    kv = await bounded(admin.jetstream().key_value(Subjects(root).jwks_bucket))
    entry = await bounded(kv.get(kv_key(issuer)))
    try:
        sealed = msgspec.json.decode(entry.value or b"", type=SealedKeySet)
        keyset = msgspec.json.decode(bytes(sealed.body), type=KeySet)
    except msgspec.DecodeError:
        return set()
    return {str(k.get("kid")) for k in keyset.keys}


async def real_refresh_is_taken(
    http, stack: Stack, publisher: Publisher, admin: NatsClient, root: str
) -> None:
    """The issuer rotates in a key; a jwks replica that may fetch at once (no cooldown) stores
    the real set, sealed, over the planted entry, and the verifier takes it: a token signed
    with the new key mints."""
    issuer = publisher.issuer
    rotated = SigningKey.generate(f"rotated-{uuid.uuid4().hex[:8]}")
    issuer.keys.append(rotated)
    try:
        await asyncio.to_thread(
            stack.start, "jwks", replica="-refresh", extra={"TRUSTPUB_REFRESH_COOLDOWN": "0"}
        )
        try:

            async def stored() -> bool:
                return rotated.kid in await bucket_kids(admin, root, issuer.issuer)

            await until(stored, "the jwks replica stores the rotated key set", timeout=30)
        finally:
            await asyncio.to_thread(stack.stop, "jwks-refresh")
        await legit_mint(http, stack, issuer.token(publisher.claims(), key=rotated))
    finally:
        issuer.keys.remove(rotated)


@pytest.mark.parametrize(("identity", "expected"), matrix(jwks=SEALED))
async def test_4_a_planted_key_set_does_not_make_the_verifier_trust_the_attackers_key(
    identity, expected, bus, stack, stack_root, stack_env, http, publisher, attacker_key, admin
):
    """The verifiers take an issuer's keys from the bucket; an entry with the attacker's key,
    stamped ten years ahead so that no real refresh would ever replace it, is refused whether
    plain or under a made-up seal, and later real refreshes are still taken."""
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    issuer = publisher.issuer
    bucket_subject = f"$KV.{Subjects(stack_root).jwks_bucket}.{kv_key(issuer.issuer)}"
    keyset = planted(issuer.issuer, issuer.jwks()["keys"], attacker_key.public_jwk())
    body = encode(keyset)
    (reader,) = KEYSETS.readers
    fake = SealedKeySet(kid=ring_kid(bus, KEYSETS.writer, reader), mac=made_up_mac(), body=msgspec.Raw(body))
    entries = (body, encode(fake))
    before = await refusals(stack, VERIFIER, "bucket.jwks")

    if await refused_connection(bus, identity, b"".join(pub_frame(bucket_subject, e) for e in entries)):
        assert expected == REFUSED_CONNECTION
    else:
        async with attacking(bus, identity, stack_root) as attacker:
            if expected == PERMISSION:
                for entry in entries:
                    await attacker.conn.publish(bucket_subject, entry)
                await attacker.expect_violation("publish", bucket_subject)
                assert await refusals(stack, VERIFIER, "bucket.jwks") == before
            else:
                assert expected == SEALED
                js = attacker.conn.jetstream()
                for entry in entries:  # stored: the writer's identity may put
                    await bounded(js.publish(bucket_subject, entry, timeout=5))
                await refused(stack, VERIFIER, "bucket.jwks", before, ("unsealed", "bad-mac"))
                assert attacker.violations() == []
    if expected != SEALED:
        assert attacker_key.kid not in await bucket_kids(admin, stack_root, issuer.issuer)
    await attacker_token_refused(http, stack, publisher, attacker_key, db)
    await legit_mint(http, stack, publisher.token())
    if expected == SEALED:
        # The bucket holds the planted entry now; the next real set replaces it.
        await real_refresh_is_taken(http, stack, publisher, admin, stack_root)
        await attacker_token_refused(http, stack, publisher, attacker_key, db)


# --- 5. eavesdropping --------------------------------------------------------------------------------


@pytest.mark.parametrize(("identity", "expected"), matrix())
async def test_5_listening_everywhere_captures_no_token(
    identity, expected, bus, stack, stack_root, http, publisher, admin
):
    """Each identity reads only its own inbox and, in its own queue group, the requests it
    serves: subscribing to the root, to every inbox or to everything captures neither the OIDC
    token going in nor the upload token coming out, while the admin's same subscription (the
    control) sees both."""
    wide = (f"{stack_root}.>", "_INBOX.>", ">")
    frames = b"".join(sub_frame(s, n) for n, s in enumerate(wide, 1))
    control = Capture()
    await admin.subscribe(">", cb=control.add)
    await bounded(admin.flush())
    oidc = publisher.token()

    if await refused_connection(bus, identity, frames):
        assert expected == REFUSED_CONNECTION
        upload = await legit_mint(http, stack, oidc)
    else:
        async with attacking(bus, identity, stack_root) as attacker:
            captures = [await attacker.listen(s) for s in wide]
            await attacker.expect_violation("subscription", *wide)
            upload = await legit_mint(http, stack, oidc)
            await attacker.flush()
            for subject, capture in zip(wide, captures, strict=True):
                assert capture.msgs == [], (subject, [m.subject for m in capture.msgs])
    await bounded(admin.flush())
    assert control.containing(oidc), "the control saw no OIDC token: the exchange did not cross the bus"
    assert control.containing(upload), "the control saw no upload token"


# --- 6. rogue responders -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fresh_gateway(stack: Stack) -> AsyncIterator[str]:
    """A second gateway that has not seen the minter's keys yet: its first request asks the
    minter's queue group (where a rogue may answer); its base URL."""
    port = free_port()
    await asyncio.to_thread(stack.start, "gateway", replica="-fresh", extra={"TRUSTPUB_HTTP_PORT": str(port)})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await asyncio.to_thread(stack.stop, "gateway-fresh")


def forged_upload_token(projects: list[str]) -> tuple[str, dict[str, Any]]:
    now = int(time.time())
    grant = MintGrant(
        mint_id=str(uuid.uuid4()),
        publisher_id=str(uuid.uuid4()),
        projects=projects,
        issued_at=now,
        expires_at=now + YEAR,
    )
    token = foreign_signer().mint(grant)
    return token, claims_of(token)


GARBAGE = ("garbage", "trustpub-a.b.c", "trustpub-" + "A" * 40 + "." + "B" * 40 + "." + "C" * 40)


@pytest.mark.parametrize(("identity", "expected"), matrix(minter=CHECKED))
async def test_6_a_rogue_key_responder_changes_nothing_served(
    identity, expected, bus, stack, stack_root, stack_env, http, publisher
):
    """The gateway serves and verifies with the minter keys it is pinned to: a rogue answering
    ``token.keys`` with its own key, and another key under the pinned id, changes neither
    ``/_/oidc/jwks`` nor what introspects active."""
    status, served = await jwks_served(http, stack.base_url)
    assert status == 200, served
    pinned = stack_env["TRUSTPUB_MINTER_KEY_IDS"].split(",")
    assert [k["kid"] for k in served["keys"]] == pinned
    rogue_key = foreign_signer().keys[0].public_jwk
    impostor = {**foreign_signer().keys[0].public_jwk, "kid": pinned[0]}
    rogue_set = KeysReply(jwks={"keys": [impostor, rogue_key, *served["keys"]]})
    forged, _ = forged_upload_token(["numpy"])
    subject, queue = TOKEN_KEYS.subject(stack_root), TOKEN_KEYS.queue(stack_root)

    if await refused_connection(bus, identity, sub_frame(subject, 1, queue) + sub_frame(subject, 2)):
        assert expected == REFUSED_CONNECTION
    else:
        async with attacking(bus, identity, stack_root) as attacker:
            asked = 0

            async def answer(msg: Msg) -> None:
                nonlocal asked
                asked += 1
                await attacker.conn.publish(msg.reply, encode(rogue_set))

            await attacker.conn.subscribe(subject, queue=queue, cb=answer)
            await attacker.conn.subscribe(subject, cb=answer)  # a copy of every request
            await attacker.flush()
            if expected == PERMISSION:
                await attacker.expect_violation("subscription", subject)
                assert (await jwks_served(http, stack.base_url)) == (200, served)
                assert await introspect(http, stack.base_url, forged) == {"active": False}
            else:
                assert expected == CHECKED
                # Owning the queue group, not every request: only the copy is refused.
                assert len(attacker.violations()) == 1, attacker.errors
                # A gateway asks for the keys until it holds the pinned ones: start fresh ones
                # until the rogue has answered one (each query goes to one member at random).
                for _ in range(10):
                    async with fresh_gateway(stack) as base:
                        assert (await jwks_served(http, base)) == (200, served)
                        assert await introspect(http, base, forged) == {"active": False}
                        for token in GARBAGE:
                            assert await introspect(http, base, token) == {"active": False}
                    if asked:
                        break
                assert asked, "the rogue was never asked"
    assert (await jwks_served(http, stack.base_url)) == (200, served)
    for token in (*GARBAGE, forged):
        assert await introspect(http, stack.base_url, token) == {"active": False}
    # Still the real minter's keys: a real token introspects active.
    real = await legit_mint(http, stack, publisher.token())
    assert (await introspect(http, stack.base_url, real))["active"] is True


@pytest.mark.parametrize(("identity", "expected"), matrix(registry=CHECKED))
async def test_6_a_rogue_mint_status_responder_makes_nothing_active(
    identity, expected, bus, stack, stack_root, http, publisher
):
    """Introspection asks the registry for a mint record only after a pinned key's signature
    holds: a rogue answering ``mint.status`` with "known, not revoked" and exactly the claims
    of the attacker's token is never even asked about garbage or the attacker's token."""
    forged, claims = forged_upload_token([publisher.project])
    lie = {
        "known": True,
        "revoked": False,
        "expires_at": claims["exp"],
        "publisher_id": claims["sub"],
        "projects": claims["projects"],
    }
    subject, queue = MINT_STATUS.subject(stack_root), MINT_STATUS.queue(stack_root)

    if await refused_connection(bus, identity, sub_frame(subject, 1, queue)):
        assert expected == REFUSED_CONNECTION
    else:
        async with attacking(bus, identity, stack_root) as attacker:
            asked: list[str] = []

            async def answer(msg: Msg) -> None:
                mint_id = msgspec.json.decode(msg.data, type=MintStatusRequest).mint_id
                asked.append(mint_id)
                await attacker.conn.publish(msg.reply, encode(MintStatus(mint_id=mint_id, **lie)))

            await attacker.conn.subscribe(subject, queue=queue, cb=answer)
            await attacker.flush()
            if expected == PERMISSION:
                await attacker.expect_violation("subscription", subject)
            else:
                assert expected == CHECKED
                assert attacker.violations() == []
            for token in (*GARBAGE, forged):
                assert await introspect(http, stack.base_url, token) == {"active": False}
            await attacker.flush()
            assert asked == []
    for token in (*GARBAGE, forged):
        assert await introspect(http, stack.base_url, token) == {"active": False}
    real = await legit_mint(http, stack, publisher.token())
    assert (await introspect(http, stack.base_url, real))["active"] is True


# The two rogues below need the identity that owns the subject (everyone else's subscription
# is refused by the server, as the matrices above show), and answer what is not a lie the
# gateway can detect by a signature: a key set without the pinned key, and "not revoked".


@contextlib.asynccontextmanager
async def rogue(
    bus: TestBus, root: str, identity: str, endpoint: Endpoint[Any, Any], reply: msgspec.Struct
) -> AsyncIterator[list[Msg]]:
    """A rogue in the endpoint's queue group, as ``identity``, answering every request it gets
    with ``reply``; the requests it got."""
    async with attacking(bus, identity, root) as attacker:
        asked: list[Msg] = []

        async def answer(msg: Msg) -> None:
            asked.append(msg)
            await attacker.conn.publish(msg.reply, encode(reply))

        await attacker.conn.subscribe(endpoint.subject(root), queue=endpoint.queue(root), cb=answer)
        await attacker.flush()
        assert attacker.violations() == []
        yield asked


async def test_6_a_rogue_key_responder_cannot_withdraw_the_pinned_keys(
    bus, stack, stack_root, stack_env, http, publisher
):
    """A rogue answering ``token.keys`` (as the minter, in its queue group) with a key set
    that lacks the pinned key, and carries another key under the pinned id instead, cannot
    take the served keys away: a gateway keeps every pinned key it has seen and asks no more
    once it holds them all, so at worst a gateway that never saw them answers 503 until the
    real minter answers it (asked again after a second), and then never again."""
    status, served = await jwks_served(http, stack.base_url)
    assert status == 200, served
    pinned = stack_env["TRUSTPUB_MINTER_KEY_IDS"].split(",")
    impostor = {**foreign_signer().keys[0].public_jwk, "kid": pinned[0]}
    real = await legit_mint(http, stack, publisher.token())
    withdrawn = KeysReply(jwks={"keys": [impostor]})
    async with rogue(bus, stack_root, MINTER, TOKEN_KEYS, withdrawn) as asked:
        # The gateway that holds the keys is not moved by the rogue: it does not even ask.
        for _ in range(5):
            assert (await jwks_served(http, stack.base_url)) == (200, served)
            assert (await introspect(http, stack.base_url, real))["active"] is True
        assert asked == []
        async with fresh_gateway(stack) as base:
            deadline = time.monotonic() + 30
            while (answer := await jwks_served(http, base)) != (200, served):
                # Only the rogue's "withdrawn" answer can explain a miss, and only at first.
                assert answer[0] == 503, answer
                assert asked, answer
                assert time.monotonic() < deadline, "the real minter's keys never arrived"
                await asyncio.sleep(0.2)
            seen = len(asked)
            for _ in range(20):
                assert (await jwks_served(http, base)) == (200, served), f"after {len(asked)} rogue answers"
                assert (await introspect(http, base, real))["active"] is True
            assert len(asked) == seen, "a gateway that holds every pinned key asked again"


async def test_6_a_rogue_mint_status_responder_cannot_reactivate_a_burned_token(
    bus, stack, stack_root, http, publisher
):
    """A rogue answering ``mint.status`` (as the registry, in its queue group) "known, not
    revoked" with exactly the claims of a token that was burned cannot make it introspect
    active again (the token's holder burned it because it leaked): the answer of mint.status
    carries the registry's seal, and the rogue's has none, so the gateway refuses it (503,
    counted) instead of believing it."""
    burned = await legit_mint(http, stack, publisher.token())
    async with http.post(f"{stack.base_url}/_/oidc/burn-token", json={"token": burned}) as resp:
        assert resp.status == 202, await resp.text()
    assert await introspect(http, stack.base_url, burned) == {"active": False}
    claims = claims_of(burned)
    lie = MintStatus(
        mint_id=claims["jti"],
        known=True,
        revoked=False,
        expires_at=claims["exp"],
        publisher_id=claims["sub"],
        projects=claims["projects"],
    )
    refused_before = (await refusals(stack, "gateway", "mint.status")).get("unsealed", 0)
    async with rogue(bus, stack_root, REGISTRY, MINT_STATUS, lie) as asked:
        for _ in range(60):
            if len(asked) >= 3:
                break
            async with http.post(f"{stack.base_url}/_/oidc/introspect", json={"token": burned}) as resp:
                answer = await resp.json()
            # The real registry's answer (inactive), or the rogue's refused: never active.
            assert (resp.status, answer) == (200, {"active": False}) or (
                resp.status == 503 and answer["errors"][0]["code"] == "unavailable"
            ), (resp.status, answer)
        assert len(asked) >= 3, f"the rogue was asked {len(asked)} times"
    # Every rogue answer was refused and counted by the gateway (for want of the registry's seal).
    assert (await refusals(stack, "gateway", "mint.status")).get("unsealed", 0) >= refused_before + len(asked)
    assert await introspect(http, stack.base_url, burned) == {"active": False}


# --- 7. the audit trail ------------------------------------------------------------------------------


def forged_events(bus: TestBus, issuer: str, root: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """(subject, data, headers): refused exchanges that never happened, back-dated, with
    escape sequences in every free-text field, unsealed and under a made-up gateway seal; and
    a success that never happened."""
    back = datetime(2001, 1, 1, tzinfo=UTC).timestamp()

    def event(outcome: str, **fields: str) -> bytes:
        return encode(
            ExchangeEvent(
                event_id=str(uuid.uuid4()),
                exchange_id=f"attack-{uuid.uuid4().hex}",
                at=back,
                outcome=outcome,
                token_hash_prefix="0123456789abcdef",
                **fields,
            )
        )

    failed = EXCHANGE_FAILED.subject(root)
    plausible = {"code": "invalid-token", "issuer": issuer, "provider": "github"}
    fake_seal = f"v1 {GATEWAY} {ring_kid(bus, GATEWAY, REGISTRY)} {made_up_mac()}"
    return [
        (failed, event("failed", description=f"forged{ESCAPES}", **plausible), {}),
        (failed, event("failed", description=f"sealed{ESCAPES}", **plausible), {SEAL_HEADER: fake_seal}),
        (
            failed,
            event(
                "failed", code=f"invalid-token{ESCAPES}", description=ESCAPES, issuer=ESCAPES, provider="x"
            ),
            {},
        ),
        (
            EXCHANGE_SUCCEEDED.subject(root),
            event("succeeded", issuer=issuer, provider="github", publisher_id=str(uuid.uuid4())),
            {},
        ),
    ]


@pytest.mark.parametrize(("identity", "expected"), matrix(gateway=SEALED))
async def test_7_hand_published_exchange_events_become_no_audit_rows(
    identity, expected, bus, stack, stack_root, stack_env, http, publisher
):
    """Only the gateway publishes exchange events, and the registry stores a refused exchange
    only under the gateway's seal: events published by hand, back-dated, full of escape
    sequences, become no audit row, while a real refused exchange right after them does."""
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    events = forged_events(bus, publisher.issuer.issuer, stack_root)
    ids = [msgspec.json.decode(data)["exchange_id"] for _, data, _ in events]
    label = "events.exchange.failed"
    before = await refusals(stack, REGISTRY, label)

    async def no_attackers_rows() -> None:
        assert await audit_rows(db, "exchange_id = ANY($1::text[])", ids) == 0
        assert await audit_rows(db, "at < '2002-01-01'") == 0

    if await refused_connection(bus, identity, b"".join(pub_frame(s, d) for s, d, _ in events)):
        assert expected == REFUSED_CONNECTION
    else:
        async with attacking(bus, identity, stack_root) as attacker:
            if expected == PERMISSION:
                for subject, data, headers in events:
                    await attacker.conn.publish(subject, data, headers=headers or None)
                await attacker.expect_violation("publish", *{s for s, _, _ in events})
            else:
                assert expected == SEALED
                js = attacker.conn.jetstream()
                for subject, data, headers in events:  # stored: the gateway may publish them
                    await bounded(js.publish(subject, data, timeout=5, headers=headers or None))
                await refused(stack, REGISTRY, label, before, ("unsealed", "bad-mac"))
                assert attacker.violations() == []
    if expected != SEALED:
        assert await refusals(stack, REGISTRY, label) == before
    # A real refused exchange, published after the forgeries: once its row is there, the
    # consumer has been through everything before it.
    status, body, headers = await bounded(mint(http, stack, publisher.token(environment="staging")))
    assert status == 422, body
    exchange_id = headers["X-Trustpub-Exchange-Id"]

    async def stored() -> bool:
        return await audit_rows(db, "exchange_id = $1 AND kind = 'exchange.failed'", exchange_id) == 1

    await until(stored, "the real refused exchange's audit row")
    await no_attackers_rows()


async def test_7_audit_list_prints_escape_sequences_escaped(stack_env, capsys):
    """Whatever reached an audit row (a token's claims, a client's input) cannot drive the
    operator's terminal: ``trustpub audit list`` prints every control character escaped."""
    db = stack_env["TRUSTPUB_DATABASE_URL"]
    exchange_id = f"escapes-{uuid.uuid4().hex}"
    event_id = uuid.uuid4()
    detail = {
        "description": f"refused{ESCAPES}",
        "issuer": f"https://evil.test/{ESCAPES}",
        "provider": f"github{ESCAPES}",
        "token_hash_prefix": f"0123{ESCAPES}",
    }
    conn = await asyncpg.connect(db, timeout=5)
    try:
        await conn.execute(
            "INSERT INTO audit_events (event_id, kind, exchange_id, outcome, code, detail)"
            " VALUES ($1, 'exchange.failed', $2, $3, $4, $5::jsonb)",
            event_id,
            exchange_id,
            f"failed{ESCAPES}",
            f"invalid-token{ESCAPES}",
            json.dumps(detail),
        )
        capsys.readouterr()
        for extra in ([], ["--json"]):
            argv = ["audit", "list", "--database-url", db, "--exchange", exchange_id, *extra]
            assert await asyncio.to_thread(cli.main, argv) == 0
            out = capsys.readouterr().out
            assert out.strip(), "the row is listed"
            # Nothing that is not printable but the line ends; the escapes spelled out instead.
            assert all(c.isprintable() or c == "\n" for c in out), repr(out)
            assert "invalid-token" in out
            assert "\\x1b" in out or "\\u001b" in out, out
    finally:
        await conn.execute("DELETE FROM audit_events WHERE event_id = $1", event_id)
        await conn.close()
