"""Per-publisher constraints beyond PyPI: allowed refs (exact or wildcard patterns, never a
user regular expression) and the minted token's lifetime."""

from __future__ import annotations

import time

import pytest
from deploy.devstack.issuer import github_claims

from trustpub.providers import github, rules
from trustpub.providers.rules import RegistrationError, ref_matches


@pytest.mark.parametrize(
    ("pattern", "ref", "ok"),
    [
        ("refs/tags/v1.0.0", "refs/tags/v1.0.0", True),
        ("refs/tags/v1.0.0", "refs/tags/v1.0.00", False),
        ("refs/tags/v*", "refs/tags/v1.2.3", True),
        ("refs/tags/v*", "refs/tags/v", True),
        ("refs/tags/v*", "refs/tags/1.2.3", False),
        ("refs/tags/v*", "refs/heads/v1", False),
        # A wildcard never crosses "/".
        ("refs/heads/*", "refs/heads/main", True),
        ("refs/heads/*", "refs/heads/feature/x", False),
        ("refs/heads/release/*", "refs/heads/release/1.x", True),
        ("refs/tags/v?.*", "refs/tags/v1.2", True),
        ("refs/tags/v?.*", "refs/tags/v10.2", False),
        ("refs/tags/*-rc*", "refs/tags/1.0-rc1", True),
        # Regex metacharacters are literal: nothing here is a regular expression.
        ("refs/tags/v1.0", "refs/tags/v1x0", False),
        ("refs/tags/v(1|2)", "refs/tags/v1", False),
    ],
)
def test_ref_matches(pattern, ref, ok):
    assert ref_matches(pattern, ref) is ok


def test_pathological_pattern_is_fast():
    # The matcher backtracks only to the last "*": quadratic at worst, never exponential.
    pattern = "refs/tags/" + "a*" * 40 + "b"
    # CPU time of this thread: a loaded machine that keeps the test waiting for a core does
    # not count (exponential backtracking would take ages of CPU, quadratic takes microseconds).
    started = time.thread_time()
    assert not ref_matches(pattern, "refs/tags/" + "a" * 200)
    assert time.thread_time() - started < 0.5


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("main", "must be a full ref name"),
        ("refs/heads/ma in", "character git never allows"),
        ("refs/heads/[ab]", "character git never allows"),
        ("refs/heads/m\u00e4in", "character git never allows"),
        ("refs/*/v1", "must name the kind of ref without wildcards"),
        ("refs/*", "must name the kind of ref without wildcards"),
        ("refs/tags", "must name the kind of ref without wildcards"),
        ("refs/heads/a..b", "is not a valid git ref name"),
        ("refs/heads//a", "is not a valid git ref name"),
        ("refs/heads/x.lock", "is not a valid git ref name"),
        ("refs/tags/" + "v" * 300, "must be a full ref name"),
    ],
)
def test_allowed_refs_validation_refuses(value, message):
    with pytest.raises(RegistrationError, match=message):
        rules.validate_allowed_refs([value])


def test_allowed_refs_validation_keeps_order_and_drops_duplicates():
    assert rules.validate_allowed_refs([" refs/tags/v* ", "refs/heads/main", "refs/tags/v*"]) == [
        "refs/tags/v*",
        "refs/heads/main",
    ]
    with pytest.raises(RegistrationError, match="at most 32 allowed refs"):
        rules.validate_allowed_refs([f"refs/tags/v{i}" for i in range(33)])


@pytest.mark.parametrize(
    ("value", "ok"), [(None, True), (299, False), (300, True), (3600, True), (3601, False)]
)
def test_token_lifetime_bounds(value, ok):
    if ok:
        assert rules.validate_token_lifetime(value) == value
    else:
        with pytest.raises(RegistrationError, match="must be 300 to 3600 seconds"):
            rules.validate_token_lifetime(value)


def test_constraints_only_when_set():
    assert rules.constraints() == {}
    assert rules.constraints(["refs/tags/v*"], 600) == {
        "allowed_refs": ["refs/tags/v*"],
        "token_lifetime": 600,
    }


def test_github_allowed_refs_rule():
    s = github.validate_spec(
        owner="octo-org",
        owner_id="1001",
        repository="demo",
        repository_id="2002",
        workflow="release.yml",
        allowed_refs=["refs/tags/v*", "refs/heads/release"],
        token_lifetime=1200,
    )
    assert (s["allowed_refs"], s["token_lifetime"]) == (["refs/tags/v*", "refs/heads/release"], 1200)
    ok = github_claims("aud", ref="refs/tags/v2.0.0")
    assert all(r.ok for r in github.PROVIDER.evaluate(s, ok))
    bad = github_claims("aud", ref="refs/heads/main")
    (result,) = [r for r in github.PROVIDER.evaluate(s, bad) if not r.ok]
    assert result.rule == "allowed_refs"
    assert result.expected == '"refs/tags/v*", "refs/heads/release"'
    assert result.actual == "refs/heads/main"
    assert result.description == (
        'ref "refs/heads/main" is not among the allowed refs ("refs/tags/v*", "refs/heads/release")'
    )
    # A deployment tied to a commit has no ref: refused when refs are constrained.
    sha_only = github_claims(
        "aud", ref="", workflow_ref="octo-org/demo/.github/workflows/release.yml@" + "0" * 40
    )
    (result,) = [r for r in github.PROVIDER.evaluate(s, sha_only) if r.rule == "allowed_refs"]
    assert not result.ok
    assert result.description.startswith("the token carries no ref; the publisher allows only")


def test_merge_constraints():
    base = {"allowed_refs": ["refs/tags/v*"], "token_lifetime": 600}
    rules.merge_constraints(base, {"token_lifetime": 600, "allowed_refs": ["refs/tags/v*"]})
    with pytest.raises(RegistrationError, match="allowed refs"):
        rules.merge_constraints(base, {"token_lifetime": 600})
    with pytest.raises(RegistrationError, match="token lifetime 600"):
        rules.merge_constraints(base, {"allowed_refs": ["refs/tags/v*"]})
