"""GitLab publisher rules: each rule passes and fails with its description, id pinning,
self-managed issuers, provenance and registration input (PyPI's form rules).

Claim sets come from ``gitlab_claims`` (deploy/devstack/issuer.py), shaped like the
payload in GitLab's documentation, "OpenID Connect (OIDC) Authentication Using ID Tokens",
section "Token payload" (docs.gitlab.com/ci/secrets/id_token_authentication/).
"""

from __future__ import annotations

import pytest
from deploy.devstack.issuer import GITLAB_ISSUER, gitlab_claims

from trustpub.messages import InvalidPublisher
from trustpub.providers import gitlab
from trustpub.providers.rules import RegistrationError

unique_key = gitlab.PROVIDER.unique_key
merge_spec = gitlab.PROVIDER.merge_spec

AUD = "trustpub-test"
SELF_MANAGED = "https://gitlab.example.test"
URI = "gitlab.com/my-group/my-project//.gitlab-ci.yml@refs/heads/main"


def spec(**kw):
    fields = {
        "namespace": "my-group",
        "project": "my-project",
        "ci_config_path": ".gitlab-ci.yml",
        "environment": "production",
        "namespace_id": "72",
        "project_id": "20",
    }
    fields.update(kw)
    return gitlab.validate_spec(**fields)


def claims(**kw):
    return gitlab_claims(AUD, **kw)


def failures(s, c) -> dict[str, str]:
    return {r.rule: r.description for r in gitlab.PROVIDER.evaluate(s, c) if not r.ok}


def test_documented_claims_pass_every_rule():
    c = claims()
    assert c["ci_config_ref_uri"] == URI
    assert c["sub"] == "project_path:my-group/my-project:ref_type:branch:ref:main"
    results = gitlab.PROVIDER.evaluate(spec(), c)
    assert [r.rule for r in results] == list(gitlab.RULES)
    assert all(r.ok for r in results), results
    assert gitlab.lookup_key(c) == "my-group/my-project"
    assert gitlab.spec_lookup_key(spec(namespace="My-Group")) == gitlab.lookup_key(c)


def test_result_carries_expected_and_actual():
    (result,) = [
        r for r in gitlab.PROVIDER.evaluate(spec(), claims(project="other")) if r.rule == "project_path"
    ]
    assert (result.ok, result.expected, result.actual) == (False, "my-group/my-project", "my-group/other")


def test_sub():
    c = claims(sub="project_path:my-group/other:ref_type:branch:ref:main")
    assert failures(spec(), c) == {
        "sub": 'sub "project_path:my-group/other:ref_type:branch:ref:main" does not begin with the '
        'registered "project_path:my-group/my-project"'
    }
    # Case-insensitive, as GitLab paths are (and as Warehouse compares).
    assert failures(spec(), claims(sub="project_path:My-Group/My-Project:ref_type:branch:ref:main")) == {}
    assert failures(spec(), claims(sub="repo:my-group/my-project")) == {
        "sub": 'sub "repo:my-group/my-project" is not of the form project_path:NAMESPACE/PROJECT:...'
    }


def test_project_path():
    got = failures(spec(), claims(namespace="evil-group"))
    assert got["project_path"] == (
        'project_path "evil-group/my-project" is not the registered project "my-group/my-project"'
    )
    assert failures(spec(namespace="My-Group", project="My-Project"), claims()) == {}


def test_ci_config_ref_uri_other_file():
    c = claims(ci_config_ref_uri="gitlab.com/my-group/my-project//other.yml@refs/heads/main")
    assert failures(spec(), c) == {
        "ci_config_ref_uri": 'ci_config_ref_uri "gitlab.com/my-group/my-project//other.yml@refs/heads/main" '
        'does not name the registered pipeline file ".gitlab-ci.yml"'
    }


def test_ci_config_ref_uri_other_project_or_ref():
    c = claims(ci_config_ref_uri="gitlab.com/evil/proj//.gitlab-ci.yml@refs/heads/main")
    assert failures(spec(), c)["ci_config_ref_uri"].endswith(
        'is not a pipeline of the token\'s project "gitlab.com/my-group/my-project"'
    )
    c = claims(ci_config_ref_uri="gitlab.com/my-group/my-project//.gitlab-ci.yml@refs/heads/other")
    assert failures(spec(), c)["ci_config_ref_uri"].endswith(
        'is not at the token\'s ref_path "refs/heads/main" or sha "714a629c0b401fdce83e847fc9589983fc6f46bc"'
    )


def test_ci_config_ref_uri_at_sha_passes():
    c = claims()
    c["ci_config_ref_uri"] = f"gitlab.com/my-group/my-project//.gitlab-ci.yml@{c['sha']}"
    assert failures(spec(), c) == {}


@pytest.mark.parametrize("empty", ["ref_path", "sha"])
def test_ci_config_ref_uri_needs_ref_path_and_sha(empty):
    got = failures(spec(), claims(**{empty: ""}))
    assert "must both be non-empty" in got["ci_config_ref_uri"]


def test_ci_config_ref_uri_empty():
    assert failures(spec(), claims(ci_config_ref_uri=""))["ci_config_ref_uri"] == (
        "the ci_config_ref_uri claim is empty"
    )


def test_pipeline_file_in_a_subdirectory():
    c = claims(ci_config_path="ci/release.yml")
    assert failures(spec(ci_config_path="ci/release.yml"), c) == {}
    assert "pipeline file" in failures(spec(), c)["ci_config_ref_uri"]


def test_environment_is_case_sensitive():
    assert failures(spec(), claims(environment="Production")) == {
        "environment": 'environment "Production" does not match the registered environment "production" '
        "(GitLab environments are case-sensitive)"
    }
    assert failures(spec(), claims(environment=None)) == {
        "environment": 'the token carries no environment; the publisher requires "production"'
    }
    assert failures(spec(environment=""), claims(environment="anything")) == {}
    assert gitlab.PROVIDER.specificity(spec()) == 1
    assert gitlab.PROVIDER.specificity(spec(environment="")) == 0


def test_ids_resurrection_and_pinning():
    assert failures(spec(), claims(namespace_id="999")) == {
        "namespace_id": 'namespace_id "999" does not match the registered namespace id "72" '
        "(the namespace may have been deleted and its name taken by someone else)"
    }
    assert "project_id" in failures(spec(), claims(project_id="21"))
    open_ids = spec(namespace_id=None, project_id=None, pin_on_first_use=True)
    assert failures(open_ids, claims()) == {}
    assert gitlab.PROVIDER.pins(open_ids, claims()) == {"namespace_id": "72", "project_id": "20"}
    assert gitlab.PROVIDER.pins(spec(), claims()) == {}
    assert failures(open_ids, claims(project_id="2x")) == {
        "project_id": 'project_id "2x" is not a numeric id'
    }


def test_namespace_id_required_unless_pinned_on_first_use():
    # DESIGN.md, "Owners are confirmed".
    with pytest.raises(RegistrationError) as info:
        spec(namespace_id=None)
    assert str(info.value).startswith("--namespace-id is required: the owner's immutable id")
    assert "--pin-on-first-use" in str(info.value)
    with pytest.raises(RegistrationError, match="give either --namespace-id or --pin-on-first-use"):
        spec(pin_on_first_use=True)
    assert spec(project_id=None)["project_id"] is None
    assert gitlab.PROVIDER.owner_open(spec(namespace_id=None, pin_on_first_use=True))
    assert not gitlab.PROVIDER.owner_open(spec(project_id=None))
    assert gitlab.PROVIDER.owner_claim == "namespace_id"


def test_self_managed_issuer_domain():
    c = claims(issuer=SELF_MANAGED)
    assert c["ci_config_ref_uri"].startswith("gitlab.example.test/my-group/my-project//")
    assert failures(spec(), c) == {}
    # A uri naming gitlab.com in a token of the self-managed issuer is not its pipeline.
    c["ci_config_ref_uri"] = URI
    assert "is not a pipeline of the token's project" in failures(spec(), c)["ci_config_ref_uri"]


def test_allowed_refs_on_ref_path():
    tags = spec(allowed_refs=["refs/tags/v*"])
    assert failures(tags, claims()) == {
        "allowed_refs": 'ref_path "refs/heads/main" is not among the allowed refs ("refs/tags/v*")'
    }
    c = claims(ref="v1.2.0", ref_type="tag")
    assert c["ref_path"] == "refs/tags/v1.2.0"
    assert failures(tags, c) == {}


def test_missing_and_mistyped_claims():
    c = claims()
    del c["namespace_id"]
    with pytest.raises(InvalidPublisher, match="missing claim 'namespace_id'"):
        gitlab.lookup_key(c)
    assert failures(spec(), c) == {"namespace_id": "missing claim 'namespace_id'"}
    with pytest.raises(InvalidPublisher, match="must be a string, got an integer"):
        gitlab.lookup_key(claims(project_id=20))
    with pytest.raises(InvalidPublisher, match="is not of the form namespace/project"):
        gitlab.lookup_key(claims(project_path="my-gr\u043eup/p"))


def test_identity_and_provenance():
    c = claims()
    assert gitlab.identity(c) == "GitLab project my-group/my-project"
    assert gitlab.identity({"project_path": "x"}) == "this GitLab project"
    prov = gitlab.provenance(c)
    assert prov["provider"] == "gitlab"
    assert prov["repository"] == "my-group/my-project"
    assert prov["workflow"] == ".gitlab-ci.yml"
    assert prov["ref"] == "refs/heads/main"
    assert prov["run_id"] == "574"
    assert all(isinstance(v, str) for v in prov.values())


# --- registration -------------------------------------------------------------------------


def test_validate_spec_normalises():
    s = gitlab.validate_spec(
        namespace=" group/sub ",
        project="proj.x",
        ci_config_path=" .gitlab-ci.yml ",
        environment="  ",
        namespace_id="",
        allowed_refs=["refs/tags/v*"],
        token_lifetime=600,
        pin_on_first_use=True,
    )
    assert s == {
        "namespace": "group/sub",
        "project": "proj.x",
        "ci_config_path": ".gitlab-ci.yml",
        "environment": "",
        "namespace_id": None,
        "project_id": None,
        "allowed_refs": ["refs/tags/v*"],
        "token_lifetime": 600,
    }
    # Stored as typed: GitLab environments are case-sensitive.
    assert spec(environment="Prod ${X}/a")["environment"] == "Prod ${X}/a"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("namespace", "-group", "is not a GitLab namespace"),
        ("namespace", "g", "is not a GitLab namespace"),
        ("namespace", "gr..oup", "two special characters in a row"),
        ("namespace", "gr_-oup", "two special characters in a row"),
        ("namespace", "a//b", "two special characters in a row"),
        ("namespace", "group.git", "must not end in .git or .atom"),
        ("namespace", "gr\u043eup", "is not a GitLab namespace"),
        ("project", "pro/ject", "is not a GitLab project"),
        ("project", "proj.atom", "must not end in .git or .atom"),
        ("ci_config_path", ".gitlab-ci", "must be a path ending in .yml or .yaml"),
        ("ci_config_path", "ci/.yml", "must be a path ending in .yml or .yaml"),
        ("ci_config_path", "/.gitlab-ci.yml", "without a leading '/'"),
        ("ci_config_path", "ci\\x.yml", "must not contain control characters"),
        ("environment", "prod;uction", "may hold only"),
        ("namespace_id", "7a", "must be GitLab's numeric id"),
        ("allowed_refs", ["main"], "must be a full ref name"),
        ("token_lifetime", 60, "token lifetime must be 300 to 3600 seconds"),
    ],
)
def test_validate_spec_refuses(field, value, message):
    fields = {"namespace": "group", "project": "proj", "ci_config_path": ".gitlab-ci.yml", field: value}
    with pytest.raises(RegistrationError, match=message):
        gitlab.validate_spec(**fields)


def test_split_project_path():
    assert gitlab.split_project_path("a/b/c") == ("a/b", "c")
    with pytest.raises(RegistrationError, match="must be NAMESPACE/PROJECT"):
        gitlab.split_project_path("proj")


def test_unique_key_and_merge():
    a, b = spec(namespace="My-Group"), spec()
    assert unique_key(GITLAB_ISSUER, a) == unique_key(GITLAB_ISSUER, b)
    # The issuer is part of the identity: a self-managed instance's publisher is another one.
    assert unique_key(GITLAB_ISSUER, b) != unique_key(SELF_MANAGED, b)
    assert unique_key(GITLAB_ISSUER, b) != unique_key(GITLAB_ISSUER, spec(environment="Production"))
    assert merge_spec(spec(namespace_id=None, pin_on_first_use=True), spec()) == {"namespace_id": "72"}
    with pytest.raises(RegistrationError, match="namespace id 72, not 5"):
        merge_spec(spec(), spec(namespace_id="5"))
    with pytest.raises(RegistrationError, match="allowed refs"):
        merge_spec(spec(), spec(allowed_refs=["refs/tags/v*"]))
    with pytest.raises(RegistrationError, match="token lifetime"):
        merge_spec(spec(), spec(token_lifetime=600))
