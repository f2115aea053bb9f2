"""Google Cloud publisher rules: each rule passes and fails with its description,
specificity, provenance and registration input.

Claim sets come from ``google_claims`` (deploy/devstack/issuer.py), shaped like the
payload in Google Cloud's documentation, "Verify the identity of VMs", section "Token
payload" (cloud.google.com/compute/docs/instances/verifying-instance-identity): no ``jti``,
``email_verified`` a JSON boolean.
"""

from __future__ import annotations

import pytest
from deploy.devstack.issuer import GOOGLE_ISSUER, google_claims

from trustpub.messages import InvalidPublisher
from trustpub.providers import google
from trustpub.providers.rules import RegistrationError

unique_key = google.PROVIDER.unique_key
merge_spec = google.PROVIDER.merge_spec

AUD = "trustpub-test"
EMAIL = "publisher@my-project.iam.gserviceaccount.com"
SUB = "117898162393834569872"


def g_spec(**kw):
    return google.validate_spec(**{"email": EMAIL, "sub": SUB, **kw})


def g_failures(s, c) -> dict[str, str]:
    return {r.rule: r.description for r in google.PROVIDER.evaluate(s, c) if not r.ok}


# --- Google -----------------------------------------------------------------------------


def test_google_documented_claims_pass():
    c = google_claims(AUD)
    assert "jti" not in c  # single use comes from the token's hash (the verifier)
    assert c["email_verified"] is True
    results = google.PROVIDER.evaluate(g_spec(), c)
    assert [r.rule for r in results] == list(google.RULES)
    assert all(r.ok for r in results)
    assert google.lookup_key(c) == EMAIL


def test_google_email_exact():
    assert g_failures(g_spec(), google_claims(AUD, email="other@my-project.iam.gserviceaccount.com")) == {
        "email": 'email "other@my-project.iam.gserviceaccount.com" is not the registered service account '
        '"publisher@my-project.iam.gserviceaccount.com"'
    }
    # Case-sensitive, as Warehouse compares.
    assert "email" in g_failures(g_spec(), google_claims(AUD, email=EMAIL.upper()))


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (False, "false (a boolean)"),
        ("true", 'the string "true"'),
        (1, "1 (an integer)"),
        (None, "no email_verified claim"),
    ],
)
def test_google_email_verified_must_be_json_true(value, shown):
    c = google_claims(AUD, email_verified=value)
    assert g_failures(g_spec(), c) == {
        "email_verified": f"email_verified must be the JSON value true, the token carried {shown}"
    }


def test_google_sub():
    assert g_failures(g_spec(), google_claims(AUD, sub="999")) == {
        "sub": f'sub "999" does not match the registered subject "{SUB}"'
    }
    assert g_failures(g_spec(), google_claims(AUD, sub=None)) == {
        "sub": f'the token carries no sub; the publisher requires "{SUB}"'
    }
    any_sub = g_spec(sub="")
    assert g_failures(any_sub, google_claims(AUD, sub="999")) == {}
    (rule,) = [r for r in google.PROVIDER.evaluate(any_sub, google_claims(AUD)) if r.rule == "sub"]
    assert rule.expected == "any (no subject registered)"
    assert (google.PROVIDER.specificity(g_spec()), google.PROVIDER.specificity(any_sub)) == (1, 0)


def test_google_lookup_and_provenance():
    with pytest.raises(InvalidPublisher, match="missing claim 'email'"):
        google.lookup_key(google_claims(AUD, email=None))
    assert google.identity(google_claims(AUD)) == f"service account {EMAIL}"
    prov = google.provenance(google_claims(AUD))
    assert (prov["provider"], prov["email"], prov["sub"]) == ("google", EMAIL, SUB)
    assert google.PROVIDER.pins(g_spec(), google_claims(AUD)) == {}


def test_google_registration():
    assert g_spec(token_lifetime=300) == {"email": EMAIL, "sub": SUB, "token_lifetime": 300}
    with pytest.raises(RegistrationError, match="is not a service account e-mail"):
        google.validate_spec(email="not-an-email")
    with pytest.raises(RegistrationError, match="printable ASCII"):
        google.validate_spec(email=EMAIL, sub="a b")
    with pytest.raises(RegistrationError, match="token lifetime"):
        google.validate_spec(email=EMAIL, token_lifetime=3601)
    assert google.warnings(g_spec()) == []
    flagged = google.warnings(google.validate_spec(email="123-compute@developer.gserviceaccount.com"))
    assert len(flagged) == 2
    assert "no sub registered" in flagged[0]
    assert "default service account" in flagged[1]
    assert unique_key(GOOGLE_ISSUER, g_spec()) != unique_key(GOOGLE_ISSUER, g_spec(sub=""))
