"""The bus as a trust boundary, without a server: the declarations, the authorization
generated from them, the seals, and how a service joins the bus (credentials, TLS, logs)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nkeys
import pytest

from trustpub.messages.authorization import permissions, render
from trustpub.messages.endpoints import (
    BUCKETS,
    ENDPOINTS,
    EVENTS,
    SERVICES,
    inbox_prefix,
    pair_name,
    pairs_of,
    reply_origins,
    seal_pairs,
)
from trustpub.messages.subjects import Subjects
from trustpub.runtime import CommonSettings, ConfigError, load
from trustpub.runtime.bus import connect_options, init_secrets, new_user_nkey, public_key_of_seed, redact
from trustpub.runtime.logging import _redact_urls
from trustpub.runtime.seal import CLOCK_SKEW_S, MAX_VALIDITY_S, KeyRingError, SealError, Seals, parse_ring

ROOT = "trustpub"

# --- the declarations -----------------------------------------------------------------------


def test_every_endpoint_names_real_services_and_its_pipeline_is_consistent():
    for endpoint in ENDPOINTS:
        assert endpoint.server in SERVICES, endpoint
        assert endpoint.callers, endpoint
        assert set(endpoint.callers) <= set(SERVICES), endpoint
        nxt = endpoint.forwards_to
        if nxt is not None:
            # A stage hands its result on as the next stage's caller, and the first caller
            # gets what the last stage answers.
            assert endpoint.server in nxt.callers, endpoint
            assert nxt.reply is endpoint.reply, endpoint
    # A sealed request is sealed by the stage that hands it on, or by its caller when it is
    # called directly (runtime/service.py): a sealed endpoint is either a later stage of a
    # pipeline, whose callers are the stages before it, or the first, called by its callers.
    for endpoint in ENDPOINTS:
        if endpoint.sealed:
            upstream = [e for e in ENDPOINTS if e.forwards_to is endpoint]
            assert not upstream or {e.server for e in upstream} == set(endpoint.callers), endpoint
    subjects = [e.subject(ROOT) for e in ENDPOINTS] + [e.subject(ROOT) for e in EVENTS]
    assert len(subjects) == len(set(subjects))


def test_the_exchange_asks_each_stage_only_from_the_stage_before_it():
    from trustpub.messages.endpoints import PUBLISHER_MATCH, TOKEN_MINT, TOKEN_VERIFY  # noqa: PLC0415

    assert TOKEN_VERIFY.callers == ("gateway",)
    assert PUBLISHER_MATCH.callers == ("verifier",)
    assert TOKEN_MINT.callers == ("registry",)
    assert reply_origins(TOKEN_MINT) == ("gateway",)
    assert PUBLISHER_MATCH.sealed
    assert TOKEN_MINT.sealed


# --- the authorization generated from them --------------------------------------------------

_INFRA = ("$JS.", "$KV.", "_INBOX.")


def test_every_endpoint_has_its_permissions_and_every_permission_an_endpoint():
    """Fails when an endpoint has no permissions, or a permission has no endpoint."""
    granted = {service: permissions(service, (ROOT,)) for service in SERVICES}
    for endpoint in ENDPOINTS:
        subject = endpoint.subject(ROOT)
        assert f"{subject} {endpoint.queue(ROOT)}" in granted[endpoint.server].subscribe, endpoint
        assert granted[endpoint.server].responses, endpoint
        for service in SERVICES:
            may_publish = subject in granted[service].publish
            assert may_publish == (service in endpoint.callers), (endpoint, service)
            subscribed = [s for s in granted[service].subscribe if s.split(" ")[0] == subject]
            assert bool(subscribed) == (service == endpoint.server), (endpoint, service)
    for event in EVENTS:
        for service in SERVICES:
            assert (event.subject(ROOT) in granted[service].publish) == (service in event.publishers), event
    declared = {e.subject(ROOT) for e in ENDPOINTS} | {e.subject(ROOT) for e in EVENTS}
    for service, perms in granted.items():
        for subject in (*perms.publish, *(s.split(" ")[0] for s in perms.subscribe)):
            assert subject in declared or subject.startswith(_INFRA), (service, subject)
        # Its own inbox, nobody else's.
        inboxes = [s for s in perms.subscribe if s.startswith("_INBOX.")]
        assert inboxes == [f"{inbox_prefix(ROOT, service)}.>"], service
        assert not any(s in {">", f"{ROOT}.>", "_INBOX.>"} for s in (*perms.publish, *perms.subscribe))


def test_only_the_writer_may_write_the_bucket_and_only_owners_publish_events():
    names = Subjects(ROOT)
    for bucket in BUCKETS:
        writes = f"$KV.{names.bucket(bucket.suffix)}.>"
        for service in SERVICES:
            assert (writes in permissions(service, (ROOT,)).publish) == (service == bucket.writer), service
    # Nobody may delete, purge or reconfigure a stream or consumer but what it needs: the
    # events' consumers keep the events stream's bounds (docs/metrics.md, "The events stream").
    for service in SERVICES:
        for subject in permissions(service, (ROOT,)).publish:
            assert not subject.startswith(("$JS.API.STREAM.DELETE", "$JS.API.STREAM.PURGE"))
            if subject.startswith("$JS.API.STREAM.UPDATE"):
                assert subject == f"$JS.API.STREAM.UPDATE.{names.events_stream}", service
                assert any(service in event.consumers for event in EVENTS), service


def test_the_rendered_authorization_is_what_nats_server_reads():
    keys = {service: new_user_nkey()[1] for service in SERVICES}
    text = render(("a", "b"), keys)
    assert text.startswith("authorization: ")
    users = json.loads(text.removeprefix("authorization: "))["users"]
    assert [u["nkey"] for u in users] == [keys[s] for s in SERVICES]
    assert users[0]["permissions"] == permissions(SERVICES[0], ("a", "b")).to_nats()
    assert "a.token.verify" in users[0]["permissions"]["publish"]["allow"]
    assert "b.token.verify" in users[0]["permissions"]["publish"]["allow"]


def test_generated_nkeys_are_what_the_nats_library_reads():
    seed, public = new_user_nkey()
    assert seed.startswith("SU")
    assert public.startswith("U")
    assert nkeys.from_seed(seed.encode()).public_key.decode() == public
    assert public_key_of_seed(seed) == public
    with pytest.raises(ValueError, match="checksum"):
        public_key_of_seed(seed[:-2] + ("AA" if not seed.endswith("AA") else "BB"))


def test_init_creates_every_secret_once_private(tmp_path):
    created = init_secrets(tmp_path)
    names = {p.name for p in created}
    assert {f"{s}.nk" for s in SERVICES} <= names
    assert {f"{pair_name(*p)}.keys" for p in seal_pairs()} <= names
    assert "minter.jwk" in names
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in created)
    before = {p: p.read_text() for p in created}
    assert init_secrets(tmp_path) == []
    assert {p: p.read_text() for p in created} == before


# --- seals -----------------------------------------------------------------------------------


@pytest.fixture
def secrets(tmp_path) -> Path:
    init_secrets(tmp_path)
    return tmp_path


def _message(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "subject": "trustpub.publisher.match",
        "reply": "_INBOX.trustpub.gateway.abc.1",
        "exchange_id": "x1",
        "deadline": f"{time.time() + 5:.3f}",
        "data": b'{"type":"trustpub.publisher.v1.match_request"}',
    }
    fields.update(overrides)
    return fields


def test_a_seal_binds_everything_it_covers(secrets):
    verifier, registry = Seals.load("verifier", secrets), Seals.load("registry", secrets)
    fields = _message()
    header = verifier.seal_message("registry", **fields)  # type: ignore[arg-type]
    now = time.time()
    assert registry.check_message(header, allowed=("verifier",), now=now, **fields) == "verifier"  # type: ignore[arg-type]
    for name, value in [
        ("subject", "trustpub.token.mint"),
        ("reply", "_INBOX.trustpub.gateway.attacker.1"),
        ("exchange_id", "x2"),
        ("deadline", f"{time.time() + 50:.3f}"),
        ("data", b'{"type":"trustpub.publisher.v1.match_request","x":1}'),
    ]:
        with pytest.raises(SealError) as refused:
            registry.check_message(header, allowed=("verifier",), now=now, **_message(**{name: value}))  # type: ignore[arg-type]
        assert refused.value.reason == "bad-mac", name


def test_a_seal_is_refused_when_missing_malformed_from_another_sender_or_out_of_time(secrets):
    verifier, registry, minter = (Seals.load(s, secrets) for s in ("verifier", "registry", "minter"))
    now = time.time()
    cases = [
        (None, _message(), ("verifier",), "unsealed"),
        ("v1 verifier", _message(), ("verifier",), "malformed"),
        # The minter holds a ring for minter -> registry, not for sealing match requests.
        (minter.seal_message("registry", **_message()), _message(), ("verifier",), "sender-not-allowed"),  # type: ignore[arg-type]
        (verifier.seal_message("registry", **_message()), _message(), ("minter",), "sender-not-allowed"),  # type: ignore[arg-type]
    ]
    late = _message(deadline=f"{now - CLOCK_SKEW_S - 1:.3f}")
    cases.append((verifier.seal_message("registry", **late), late, ("verifier",), "expired"))  # type: ignore[arg-type]
    far = _message(deadline=f"{now + MAX_VALIDITY_S + CLOCK_SKEW_S + 5:.3f}")
    cases.append((verifier.seal_message("registry", **far), far, ("verifier",), "expired"))  # type: ignore[arg-type]
    for header, fields, allowed, reason in cases:
        with pytest.raises(SealError) as refused:
            registry.check_message(header, allowed=allowed, now=now, **fields)  # type: ignore[arg-type]
        assert refused.value.reason == reason, (header, reason)


def test_a_key_rotates_by_listing_the_new_one_first(secrets):
    ring = secrets / "verifier-registry.keys"
    old = ring.read_text()
    message = _message()
    sealed_with_old = Seals.load("verifier", secrets).seal_message("registry", **message)  # type: ignore[arg-type]
    new_line = parse_ring("x", "k2 " + "A" * 43).keys[0]
    ring.write_text(f"k2 {'A' * 43}\n{old}")
    assert new_line[0] == "k2"
    receiver = Seals.load("registry", secrets)
    # Both keys check: a message sealed before the rollout still goes through...
    receiver.check_message(sealed_with_old, allowed=("verifier",), now=time.time(), **message)  # type: ignore[arg-type]
    # ...and the new key seals.
    assert Seals.load("verifier", secrets).seal_message("registry", **_message()).split(" ")[2] == "k2"  # type: ignore[arg-type]
    ring.write_text(f"k2 {'A' * 43}\n")
    with pytest.raises(SealError, match="not in key ring"):
        Seals.load("registry", secrets).check_message(
            sealed_with_old,
            allowed=("verifier",),
            now=time.time(),
            **message,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "has no keys"),
        ("only-a-kid\n", "expected '<key id> <secret>'"),
        ("k1 !!!!\n", "not base64url"),
        ("k1 AAAA\n", "at least 32 bytes"),
        (f"k1 {'A' * 43}\nk1 {'B' * 43}\n", "appears twice"),
    ],
)
def test_unusable_key_rings_are_refused_with_a_reason(text, why):
    with pytest.raises(KeyRingError, match=why):
        parse_ring("verifier-registry", text)


def test_a_service_does_not_start_without_the_seal_keys_it_needs(tmp_path):
    with pytest.raises(KeyRingError, match="TRUSTPUB_BUS_SECRETS_DIR"):
        Seals.load("registry", None)
    with pytest.raises(KeyRingError, match="unreadable"):
        Seals.load("registry", tmp_path)
    init_secrets(tmp_path)
    assert set(Seals.load("registry", tmp_path).rings) == set(pairs_of("registry"))


# --- joining the bus -------------------------------------------------------------------------


def test_a_service_needs_credentials_and_tls(tmp_path):
    init_secrets(tmp_path)
    base = {"TRUSTPUB_NATS_URL": "nats://nats.example:4222"}
    with pytest.raises(ConfigError, match="has no NATS credentials"):
        connect_options(load(CommonSettings, base), "verifier", ROOT)
    options = connect_options(
        load(CommonSettings, {**base, "TRUSTPUB_BUS_SECRETS_DIR": str(tmp_path)}), "verifier", ROOT
    )
    assert options["nkeys_seed"] == str(tmp_path / "verifier.nk")
    assert options["inbox_prefix"] == "_INBOX.trustpub.verifier"
    assert options["tls_handshake_first"] is True
    assert options["tls"] is not None
    plain = load(
        CommonSettings, {**base, "TRUSTPUB_NATS_URL": "nats://u:pw@h:4222", "TRUSTPUB_NATS_PLAINTEXT": "1"}
    )
    assert "tls" not in connect_options(plain, "verifier", ROOT)
    with pytest.raises(ConfigError, match="TRUSTPUB_NATS_TLS"):
        connect_options(
            load(
                CommonSettings,
                {**base, "TRUSTPUB_BUS_SECRETS_DIR": str(tmp_path), "TRUSTPUB_NATS_TLS_CA": "/nope"},
            ),
            "verifier",
            ROOT,
        )


def test_a_nats_url_with_a_password_is_redacted_in_every_log_line():
    assert redact("nats://trustpub:s3cret@nats.example:4222") == "nats://trustpub:***@nats.example:4222"
    assert redact("tls://a:b@h:1,tls://c:d@h2:1") == "tls://a:***@h:1,tls://c:***@h2:1"
    assert redact("nats://nats.example:4222") == "nats://nats.example:4222"
    event = {"event": "nats_error", "detail": "could not connect to nats://u:hunter2@h:4222", "n": 3}
    assert "hunter2" not in json.dumps(_redact_urls(None, "warning", event))


def test_design_md_carries_the_generated_permission_table():
    from trustpub.messages.authorization import table  # noqa: PLC0415

    design = (Path(__file__).resolve().parents[2] / "DESIGN.md").read_text()
    assert table() in design, "DESIGN.md's permission table differs from the generated one: paste table()"
