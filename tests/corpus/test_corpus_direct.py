"""The corpus at the first level: the verifier's function, then the provider's rules, in process.

One test per case variant (DESIGN.md, "Hostile input"): what comes out is exactly the expected
outcome (a trustpub error of the expected code, or a verified token that the rules accept or
refuse), the description names what was wrong, nothing else escapes, and every refusal is fast.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from deploy.devstack.issuer import b64u
from tests.corpus.cases import CASES, MATCH, NOMATCH, VERIFIED, Case, Ctx, case_ids
from tests.corpus.corpus_keys import GH, Cast
from tests.corpus.direct import Direct

from trustpub.messages import TrustpubError

DIRECT = [c for c in CASES if c.expect.direct_outcome is not None and c.build is not None]
# A refusal by the pre-parser or the claim checks costs microseconds of CPU: this bound on the
# CPU time of the test's thread still catches quadratic behaviour (B3: "T in < 50 ms"), and,
# being CPU time, does not move when a loaded machine leaves the test waiting for a core.
FAST_S = 0.25
# A refusal waits for nothing: past this (wall clock, generous for a loaded machine) it did.
NO_WAIT_S = 5.0


@pytest.fixture(scope="module")
def direct(cast: Cast) -> Direct:
    return Direct(cast)


@pytest.mark.parametrize("case", DIRECT, ids=case_ids(DIRECT))
async def test_case_at_the_verifier(case: Case, direct: Direct, cast: Cast) -> None:
    ctx = Ctx(cast, attacker="http://127.0.0.1:9")
    attempt = case.build(ctx)
    assert attempt.token is not None, "a direct-level case carries a token"
    expected = case.expect.direct_outcome
    started, cpu_started = time.monotonic(), time.thread_time()
    error: TrustpubError | None = None
    try:
        verified = await asyncio.wait_for(direct.verifier.verify(attempt.token), 2 * NO_WAIT_S)
    except TrustpubError as exc:  # anything else escapes and fails the test
        error = exc
    elapsed, cpu = time.monotonic() - started, time.thread_time() - cpu_started
    if error is not None:
        assert error.code.value == expected, f"{case.id}: {error.code.value}: {error.description}"
        assert case.expect.fragment in error.description, error.description
        assert attempt.token[:40] not in error.description or len(attempt.token) < 40
        assert cpu < FAST_S, f"{case.id} took {cpu:.3f} s of CPU"
        assert elapsed < NO_WAIT_S, f"{case.id} took {elapsed:.3f} s"
        return
    assert expected in {MATCH, NOMATCH, VERIFIED}, f"{case.id}: verified, expected {expected}"
    if expected == VERIFIED:
        return
    matched, why = direct.match(verified)
    if expected == MATCH:
        assert matched, f"{case.id}: {why}"
    else:
        assert not matched, f"{case.id}: a publisher accepted it"
        assert case.expect.fragment in why, why


def test_n3_a_16384_bit_rsa_key_is_refused_at_ingestion(direct: Direct) -> None:
    """N3: a JWKS key whose verification would cost ~60x an RSA-2048 one is never used: the
    jwks service drops it, and the verifier's own import refuses it again."""
    from trustpub.jwks.validate import KeyDropped, public_key_members  # noqa: PLC0415
    from trustpub.verifier.keys import KeyRejected, import_key  # noqa: PLC0415

    modulus = (1 << 16383) | secrets.randbits(16383) | 1  # 16384 bits, odd; no need for primes
    doc = {
        "kty": "RSA",
        "kid": "big-1",
        "alg": "RS256",
        "use": "sig",
        "n": b64u(modulus.to_bytes(2048)),
        "e": "AQAB",
    }
    with pytest.raises(KeyDropped, match="4096"):
        public_key_members(doc, algorithms=("RS256",))
    issuer = direct.issuers.get(GH)
    assert issuer is not None
    with pytest.raises(KeyRejected, match="2048-4096"):
        import_key(doc, issuer)
