"""GitHub publisher rules: each rule passes and fails with the exact description
(corpus groups I and J, DESIGN.md "Hostile input"), specificity, provenance and registration input."""

from __future__ import annotations

import pytest
from deploy.devstack.issuer import GITHUB_ISSUER, github_claims

from trustpub.messages import InvalidPublisher
from trustpub.providers import github, rules
from trustpub.providers.rules import RegistrationError

unique_key = github.PROVIDER.unique_key
merge_spec = github.PROVIDER.merge_spec

AUD = "trustpub-test"
WF = "octo-org/demo/.github/workflows/release.yml@refs/tags/v1.0.0"


def spec(**kw):
    fields = {
        "owner": "octo-org",
        "owner_id": "1001",
        "repository": "demo",
        "repository_id": "2002",
        "workflow": "release.yml",
        "environment": "release",
    }
    fields.update(kw)
    return github.validate_spec(**fields)


def claims(**kw):
    return github_claims(AUD, **kw)


def failures(s, c) -> dict[str, str]:
    return {r.rule: r.description for r in github.PROVIDER.evaluate(s, c) if not r.ok}


def test_baseline_passes_every_rule():
    results = github.PROVIDER.evaluate(spec(), claims())
    assert [r.rule for r in results] == list(github.RULES)
    assert all(r.ok for r in results), results
    assert github.lookup_key(claims()) == "octo-org/demo"


def test_result_carries_expected_and_actual():
    (result,) = [r for r in github.PROVIDER.evaluate(spec(), claims(repo="other")) if r.rule == "repository"]
    assert result.ok is False
    assert result.expected == "octo-org/demo"
    assert result.actual == "octo-org/other"


def test_wrong_repository():
    assert failures(spec(), claims(repo="other"))["repository"] == (
        'repository "octo-org/other" is not the registered repository "octo-org/demo"'
    )


def test_wrong_owner():
    got = failures(spec(), claims(owner="evil-org"))
    assert got["repository_owner"] == 'repository_owner "evil-org" is not the registered owner "octo-org"'
    assert "repository" in got


def test_wrong_owner_id_resurrection():
    # J3: same names, another account.
    assert failures(spec(), claims(owner_id="9999")) == {
        "repository_owner_id": 'repository_owner_id "9999" does not match the registered owner id "1001" '
        "(the owner account may have been deleted and its name taken by someone else)"
    }


@pytest.mark.parametrize("value", ["", "1001 ", " 1001"])
def test_owner_id_malformed(value):
    # J4: exact string equality.
    assert "repository_owner_id" in failures(spec(), claims(owner_id=value))


def test_owner_id_missing():
    c = claims()
    del c["repository_owner_id"]
    assert failures(spec(), c) == {"repository_owner_id": "missing claim 'repository_owner_id'"}
    with pytest.raises(InvalidPublisher, match=r"^missing claim 'repository_owner_id'$"):
        github.lookup_key(c)


def test_owner_id_as_number():
    # I1: GitHub sends strings; a number is a type mismatch, never coerced.
    c = claims(owner_id=1001)
    assert failures(spec(), c) == {
        "repository_owner_id": "claim 'repository_owner_id' must be a string, got an integer"
    }
    with pytest.raises(
        InvalidPublisher, match=r"^claim 'repository_owner_id' must be a string, got an integer$"
    ):
        github.lookup_key(c)


def test_wrong_repository_id():
    assert failures(spec(), claims(repo_id="3003"))["repository_id"].startswith(
        'repository_id "3003" does not match the registered repository id "2002"'
    )


def test_unpinned_ids_pass_and_are_reported_for_pinning():
    s = spec(owner_id=None, repository_id=None, pin_on_first_use=True)
    assert s["owner_id"] is None
    assert s["repository_id"] is None
    assert failures(s, claims()) == {}
    assert github.PROVIDER.pins(s, claims()) == {"owner_id": "1001", "repository_id": "2002"}
    assert github.PROVIDER.pins(spec(), claims()) == {}


def test_unpinned_id_must_still_be_numeric():
    s = spec(owner_id=None, pin_on_first_use=True)
    assert failures(s, claims(owner_id="")) == {
        "repository_owner_id": 'repository_owner_id "" is not a numeric id'
    }


def test_wrong_workflow():
    c = claims(workflow="other.yml", ref="refs/heads/main")
    assert failures(spec(), c) == {
        "workflow_ref": 'workflow_ref "octo-org/demo/.github/workflows/other.yml@refs/heads/main" '
        'does not name the registered workflow "release.yml"'
    }


@pytest.mark.parametrize(
    "workflow_ref",
    [
        "octo-org/demo/.github/workflows/release.yml@refs/heads/x.yml@main",
        "octo-org/demo/.github/workflows/release.yaml@refs/tags/v1.0.0",
        "octo-org/demo/.github/workflows/Release.yml@refs/tags/v1.0.0",
        "octo-org/demo/.github/workflows/../workflows/release.yml@refs/tags/v1.0.0",
        "octo-org/demo/.github/workflows/sub/release.yml@refs/tags/v1.0.0",
        "octo-org/demo/.github/workflows/release.yml",
        "evil-org/demo/.github/workflows/release.yml@refs/tags/v1.0.0",
        "octo-org/demo/.github/workflows/release.yml@refs/heads/main",
    ],
)
def test_workflow_ref_tricks(workflow_ref):
    # J7, J8: the file name and the ref are compared exactly.
    c = claims(workflow_ref=workflow_ref, job_workflow_ref=workflow_ref)
    assert "workflow_ref" in failures(spec(), c)


def test_workflow_ref_ref_mismatch_description():
    wr = "octo-org/demo/.github/workflows/release.yml@refs/heads/main"
    c = claims(workflow_ref=wr, job_workflow_ref=wr, sha="f" * 40)
    assert failures(spec(), c)["workflow_ref"] == (
        f'workflow_ref "{wr}" is not at the token\'s ref "refs/tags/v1.0.0" or sha "{"f" * 40}"'
    )


def test_workflow_ref_at_sha_passes():
    # A deployment tied to a commit has an empty ref; the sha stands in (as in Warehouse).
    sha = "0123456789abcdef0123456789abcdef01234567"
    wr = f"octo-org/demo/.github/workflows/release.yml@{sha}"
    assert failures(spec(), claims(ref="", workflow_ref=wr, job_workflow_ref=wr)) == {}


def test_ref_and_sha_empty():
    got = failures(spec(), claims(ref="", sha=""))
    assert got["ref"] == "the ref and sha claims are both empty"


def test_case_variation_passes():
    # J1: names are case-insensitive on GitHub; the ids bind the identity.
    c = claims(owner="Octo-Org", repo="Demo")
    assert c["repository"] == "Octo-Org/Demo"
    assert failures(spec(), c) == {}
    assert github.lookup_key(c) == "octo-org/demo"


def test_reusable_workflow_not_allowed():
    # J5: a foreign reusable workflow runs the job.
    job = "evil-org/tools/.github/workflows/release.yml@refs/heads/main"
    assert failures(spec(), claims(job_workflow_ref=job)) == {
        "job_workflow_ref": f'job_workflow_ref "{job}" is a reusable workflow this publisher does not allow '
        "(allowed: none)"
    }


def test_reusable_workflow_allowed_by_path_or_exact_ref():
    job = "octo-org/shared/.github/workflows/publish.yml@refs/heads/main"
    by_path = spec(allowed_reusable_workflows=["octo-org/shared/.github/workflows/publish.yml"])
    exact = spec(allowed_reusable_workflows=["octo-org/shared/.github/workflows/publish.yml@refs/heads/main"])
    other_ref = spec(
        allowed_reusable_workflows=["octo-org/shared/.github/workflows/publish.yml@refs/tags/v1"]
    )
    assert failures(by_path, claims(job_workflow_ref=job)) == {}
    assert failures(exact, claims(job_workflow_ref=job)) == {}
    assert failures(other_ref, claims(job_workflow_ref=job))["job_workflow_ref"].endswith(
        "(allowed: octo-org/shared/.github/workflows/publish.yml@refs/tags/v1)"
    )
    # The owner/repo part is case-insensitive, the path exact.
    assert failures(by_path, claims(job_workflow_ref=job.replace("octo-org/shared", "Octo-Org/Shared"))) == {}
    sibling = "octo-org/shared/.github/workflows/publish.yml@x.yml@refs/heads/main"
    assert "job_workflow_ref" in failures(by_path, claims(job_workflow_ref=sibling))


def test_attacker_repository_calling_our_workflow():
    # J6: the caller's repository is what counts.
    c = claims(
        owner="evil-org",
        owner_id="666",
        repo="x",
        job_workflow_ref="octo-org/demo/.github/workflows/release.yml@refs/tags/v1.0.0",
    )
    got = failures(spec(), c)
    assert {"repository", "repository_owner", "repository_owner_id"} <= set(got)


def test_environment_mismatch():
    assert failures(spec(), claims(environment="staging")) == {
        "environment": 'environment "staging" does not match the registered environment "release"'
    }


def test_environment_missing():
    c = claims(environment=None)
    assert "environment" not in c
    assert failures(spec(), c) == {
        "environment": 'the token carries no environment; the publisher requires "release"'
    }


def test_environment_case_insensitive():
    assert failures(spec(), claims(environment="Release")) == {}
    assert failures(spec(environment="Release"), claims(environment="RELEASE")) == {}


@pytest.mark.parametrize("value", ["release ", "rel\u0435ase", "\u0280elease"])
def test_environment_look_alikes(value):
    assert "environment" in failures(spec(), claims(environment=value))


def test_environment_kelvin_sign_not_folded():
    # "\u212a".lower() == "k": only ASCII letters are folded.
    assert "environment" in failures(spec(environment="kube"), claims(environment="\u212aube"))


@pytest.mark.parametrize(
    ("environment", "why"),
    [
        ("PROD\u00dcCTION", "U+00DC (LATIN CAPITAL LETTER U WITH DIAERESIS) at position 5 is not"),
        ("\u212aeys", "U+212A (KELVIN SIGN) at position 1 is not"),
        ("release\u200b", "U+200B (ZERO WIDTH SPACE) at position 8 is not"),
    ],
)
def test_environment_must_be_ascii_at_registration(environment, why):
    # One rule on both sides, ASCII's (DESIGN.md, "Names are ASCII").
    with pytest.raises(RegistrationError) as info:
        spec(environment=environment)
    assert f"environment {rules.quote(environment)} must be ASCII: {why}" in str(info.value)


def test_environment_one_ascii_rule_on_both_sides():
    assert spec(environment="KEYS")["environment"] == "keys"
    assert failures(spec(environment="KEYS"), claims(environment="keys")) == {}
    assert failures(spec(environment="keys"), claims(environment="KEYS")) == {}
    # The Kelvin sign is not a "K" on the token's side either.
    assert failures(spec(environment="keys"), claims(environment="\u212aeys")) == {
        "environment": 'environment "\\u212aeys" does not match the registered environment "keys"'
    }
    # A non-ASCII claim never equals an ASCII registration, whatever its case.
    assert "environment" in failures(spec(environment="production"), claims(environment="PROD\u00dcCTION"))
    # A spec stored by the old rule (Unicode lower-casing) cannot match either: it fails closed.
    legacy = {**spec(), "environment": "prod\u00fcction"}
    assert "environment" in failures(legacy, claims(environment="PROD\u00dcCTION"))
    assert "environment" in failures(legacy, claims(environment="prod\u00fcction".upper()))


def test_publisher_without_environment_accepts_any():
    assert failures(spec(environment=""), claims(environment="release")) == {}
    assert failures(spec(environment=""), claims(environment=None)) == {}


def test_environment_wrong_type():
    assert failures(spec(), claims(environment=7)) == {
        "environment": "claim 'environment' must be a string, got an integer"
    }


@pytest.mark.parametrize("event", ["pull_request_target", "workflow_run"])
def test_guarded_events_refused(event):
    desc = failures(spec(), claims(event_name=event))["event_name"]
    assert desc.startswith(f'event_name "{event}" is refused: ')
    assert f"--allow-event {event}" in desc


@pytest.mark.parametrize("event", ["pull_request_target", "workflow_run"])
def test_guarded_events_allowed(event):
    assert failures(spec(allowed_events=[event]), claims(event_name=event)) == {}


def test_sub_is_not_checked():
    # J11: customised subject templates exist.
    for sub in (
        "repository_owner_id:1001:repository_id:2002:environment:release",
        "repo:evil-org/x:ref:main",
    ):
        assert failures(spec(), claims(sub=sub)) == {}


@pytest.mark.parametrize(
    ("value", "kind"),
    [(123, "an integer"), (["octo-org/demo"], "an array"), ({"r": 1}, "an object"), (True, "a boolean")],
)
def test_repository_wrong_type(value, kind):
    with pytest.raises(InvalidPublisher, match=rf"^claim 'repository' must be a string, got {kind}$"):
        github.lookup_key(claims(repository=value))


@pytest.mark.parametrize(
    "value", ["x", "octo-orgdemo", "octo-org/demo/x", " octo-org/demo", "", "octo-org/demo\n"]
)
def test_repository_malformed(value):
    # I3
    with pytest.raises(InvalidPublisher) as info:
        github.lookup_key(claims(repository=value))
    assert info.value.description == f"repository {rules.quote(value)} is not of the form owner/name"
    assert "repository" in failures(spec(), claims(repository=value))


def test_repository_malformed_description_exact():
    with pytest.raises(InvalidPublisher, match=r'^repository "x" is not of the form owner/name$'):
        github.lookup_key(claims(repository="x"))


@pytest.mark.parametrize(
    "repository",
    [
        "octo-\u043erg/demo",  # Cyrillic o
        "\uff4f\uff43\uff54\uff4f-org/demo",  # fullwidth: NFKC would fold it to ASCII
        "octo-org/demo\u200b",  # zero-width space
    ],
)
def test_unicode_look_alikes_refused(repository):
    # J2: the ASCII pattern runs before any case folding; NFKC is never applied.
    c = claims(repository=repository)
    with pytest.raises(InvalidPublisher, match="is not of the form owner/name"):
        github.lookup_key(c)
    assert "repository" in failures(spec(), c)


def test_kelvin_sign_owner_refused():
    # "\u212aube".lower() == "kube": must not match the publisher of owner "kube".
    s = spec(owner="kube")
    c = claims(owner="kube", repository="\u212aube/demo", repository_owner="\u212aube")
    with pytest.raises(
        InvalidPublisher, match=r'^repository "\\u212aube/demo" is not of the form owner/name$'
    ):
        github.lookup_key(c)
    got = failures(s, c)
    assert {"repository", "repository_owner"} <= set(got)


def test_empty_rule_table_fails_closed():
    (result,) = rules.evaluate({}, spec(), claims())
    assert result.ok is False
    assert not rules.all_passed([])


def test_specificity():
    assert github.PROVIDER.specificity(spec()) == 1
    assert github.PROVIDER.specificity(spec(environment="")) == 0
    assert rules.most_specific([(0, "any"), (1, "env")]) == "env"
    with pytest.raises(InvalidPublisher, match="equally well"):
        rules.most_specific([(1, "a"), (1, "b")])


def test_provenance():
    c = claims()
    assert github.provenance(c) == {
        "provider": "github",
        "issuer": GITHUB_ISSUER,
        "repository": "octo-org/demo",
        "repository_id": "2002",
        "owner_id": "1001",
        "workflow": "release.yml",
        "workflow_ref": WF,
        "job_workflow_ref": WF,
        "ref": "refs/tags/v1.0.0",
        "sha": "0123456789abcdef0123456789abcdef01234567",
        "run_id": "5847329176",
        "run_attempt": "1",
        "environment": "release",
        "event_name": "push",
    }


def test_quote_bounds_and_escapes():
    assert rules.quote("A" * 30000).endswith('..."')
    assert len(rules.quote("A" * 30000)) == rules.QUOTE_LIMIT
    assert rules.quote("o\u043e") == '"o\\u043e"'


# --- registration -------------------------------------------------------------------------


def test_validate_spec_normalises():
    s = github.validate_spec(
        owner=" octo-org ",
        repository="demo",
        workflow=" release.yml ",
        environment="Release",
        owner_id="",
        allowed_events=["workflow_run", "workflow_run"],
        pin_on_first_use=True,
    )
    assert s == {
        "owner": "octo-org",
        "owner_id": None,
        "repository": "demo",
        "repository_id": None,
        "workflow": "release.yml",
        "environment": "release",
        "allowed_reusable_workflows": [],
        "allowed_events": ["workflow_run"],
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("owner", "-octo", "is not a GitHub user or organization name"),
        ("owner", "octo_org", "is not a GitHub user or organization name"),
        ("owner", "a" * 40, "is not a GitHub user or organization name"),
        ("owner", "\u043ecto", "is not a GitHub user or organization name"),
        ("repository", "de mo", "is not a GitHub repository name"),
        ("repository", "a" * 101, "is not a GitHub repository name"),
        ("repository", "..", "is not a GitHub repository name"),
        ("workflow", "release", "must be a file name ending in .yml or .yaml"),
        ("workflow", ".yml", "must be a file name ending in .yml or .yaml"),
        ("workflow", ".github/workflows/release.yml", "without a path"),
        ("workflow", "rel@ease.yml", "must not contain '@'"),
        ("environment", " release", "must not begin or end with a space"),
        ("environment", "rel;ease", "must not contain any of"),
        ("environment", "rel`ease", "must not contain any of"),
        ("environment", "rel\x00ease", "must not contain control characters"),
        ("environment", "a" * 256, "at most 255 characters"),
        ("owner_id", "12a", "must be GitHub's numeric id"),
        ("repository_id", "\u0661\u0662", "must be GitHub's numeric id"),  # Arabic-Indic digits
        ("allowed_events", ["push"], "needs no allowing"),
        ("allowed_reusable_workflows", ["octo-org/shared/release.yml"], "must look like"),
    ],
)
def test_validate_spec_refuses(field, value, message):
    fields = {"owner": "octo-org", "repository": "demo", "workflow": "release.yml", field: value}
    with pytest.raises(RegistrationError, match=message):
        github.validate_spec(**fields)
    assert issubclass(RegistrationError, ValueError)


def test_owner_id_required_unless_pinned_on_first_use():
    # DESIGN.md, "Owners are confirmed".
    with pytest.raises(RegistrationError) as info:
        spec(owner_id=None)
    message = str(info.value)
    assert message.startswith("--owner-id is required: the owner's immutable id (the id field of GitHub's")
    assert "add --pin-on-first-use" in message
    assert "trustpub publisher confirm" in message
    with pytest.raises(RegistrationError, match="give either --owner-id or --pin-on-first-use, not both"):
        spec(pin_on_first_use=True)
    # The repository id may still be left open (DESIGN.md, "Owners are confirmed").
    assert spec(repository_id=None)["repository_id"] is None
    open_owner = spec(owner_id=None, pin_on_first_use=True)
    assert github.PROVIDER.owner_open(open_owner)
    assert not github.PROVIDER.owner_open(spec(repository_id=None))
    assert github.PROVIDER.owner_claim == "repository_owner_id"


def test_unique_key():
    a = spec(owner="Octo-Org", repository="Demo", environment="Release")
    b = spec()
    assert unique_key(GITHUB_ISSUER, a) == unique_key(GITHUB_ISSUER, b)
    assert unique_key(GITHUB_ISSUER, b) != unique_key("https://ghes.example/_services/token", b)
    assert unique_key(GITHUB_ISSUER, b) != unique_key(GITHUB_ISSUER, spec(workflow="Release.yml"))
    assert unique_key(GITHUB_ISSUER, b) != unique_key(GITHUB_ISSUER, spec(environment=""))
    # The owner id is not part of the identity (as in Warehouse).
    assert unique_key(GITHUB_ISSUER, b) == unique_key(GITHUB_ISSUER, spec(owner_id="5"))
    assert github.spec_lookup_key(a) == github.lookup_key(claims())


def test_merge_spec():
    open_owner = spec(owner_id=None, pin_on_first_use=True)
    assert merge_spec(open_owner, spec()) == {"owner_id": "1001"}
    assert merge_spec(spec(), spec(owner_id=None, repository_id=None, pin_on_first_use=True)) == {}
    with pytest.raises(RegistrationError, match="owner id 1001, not 5"):
        merge_spec(spec(), spec(owner_id="5"))
    with pytest.raises(RegistrationError, match="allowed events"):
        merge_spec(spec(), spec(allowed_events=["workflow_run"]))
