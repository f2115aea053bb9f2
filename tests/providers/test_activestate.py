"""ActiveState publisher rules: each rule passes and fails with its description, and
registration input.

Claim sets come from ``activestate_claims`` (deploy/devstack/issuer.py), shaped as PyPI
consumes them (pypi/warehouse, tests/unit/oidc/models/test_activestate.py, and the claims
warehouse/oidc/models/activestate.py knows): ActiveState's own documentation prints no token.
"""

from __future__ import annotations

import pytest
from deploy.devstack.issuer import activestate_claims

from trustpub.messages import InvalidPublisher
from trustpub.providers import activestate
from trustpub.providers.rules import RegistrationError

AUD = "trustpub-test"
ACTOR_ID = "00000000-0000-1000-8000-000000000002"


def a_spec(**kw):
    return activestate.validate_spec(
        **{
            "organization": "fakeorg",
            "project": "fakeproject",
            "actor_id": ACTOR_ID,
            "actor": "fakeuser",
            **kw,
        }
    )


def a_failures(s, c) -> dict[str, str]:
    return {r.rule: r.description for r in activestate.PROVIDER.evaluate(s, c) if not r.ok}


# --- ActiveState ------------------------------------------------------------------------


def test_activestate_claims_pass():
    c = activestate_claims(AUD)
    results = activestate.PROVIDER.evaluate(a_spec(), c)
    assert [r.rule for r in results] == list(activestate.RULES)
    assert all(r.ok for r in results)
    assert activestate.lookup_key(c) == "fakeorg/fakeproject"


@pytest.mark.parametrize(
    ("sub", "message"),
    [
        ("Nonsense", 'sub "Nonsense" is not of the form org:ORGANIZATION:project:PROJECT'),
        (
            "org:fakeorg:project:fakeorg",
            (
                'sub "org:fakeorg:project:fakeorg" does not begin with the registered '
                '"org:fakeorg:project:fakeproject"'
            ),
        ),
        ("org:FakeOrg:project:fakeproject", "does not begin with the registered"),
    ],
)
def test_activestate_sub(sub, message):
    assert message in a_failures(a_spec(), activestate_claims(AUD, sub=sub))["sub"]


def test_activestate_sub_may_continue():
    c = activestate_claims(AUD, sub="org:fakeorg:project:fakeproject:extra")
    assert a_failures(a_spec(), c) == {}


def test_activestate_exact_claims_and_builder():
    assert a_failures(a_spec(), activestate_claims(AUD, actor_id="00000000-0000-1000-8000-000000000003")) == {
        "actor_id": 'actor_id "00000000-0000-1000-8000-000000000003" is not the registered actor id '
        f'"{ACTOR_ID}"'
    }
    got = a_failures(
        a_spec(), activestate_claims(AUD, organization="other", sub="org:fakeorg:project:fakeproject")
    )
    assert got == {"organization": 'organization "other" is not the registered organization "fakeorg"'}
    got = a_failures(
        a_spec(), activestate_claims(AUD, project="other", sub="org:fakeorg:project:fakeproject")
    )
    assert got == {"project": 'project "other" is not the registered ActiveState project "fakeproject"'}
    assert a_failures(a_spec(), activestate_claims(AUD, builder="other-builder")) == {
        "builder": 'builder "other-builder" is not "pypi-publisher", ActiveState\'s PyPI publisher'
    }
    with pytest.raises(InvalidPublisher, match="missing claim 'builder'"):
        activestate.lookup_key(activestate_claims(AUD, builder=None))


def test_activestate_registration():
    assert a_spec() == {
        "organization": "fakeorg",
        "project": "fakeproject",
        "actor_id": ACTOR_ID,
        "actor": "fakeuser",
    }
    for kw, message in [
        ({"project": "ab"}, "must be 3-40"),
        ({"project": "a--b"}, "without '--'"),
        ({"project": "-abc"}, "without '--'"),
        ({"organization": "org:x"}, "is not an ActiveState organization name"),
        ({"actor_id": "fakeuser"}, "must be the ActiveState user's id"),
    ]:
        with pytest.raises(RegistrationError, match=message):
            a_spec(**kw)
    assert activestate.PROVIDER.specificity(a_spec()) == 0
    prov = activestate.provenance(activestate_claims(AUD))
    assert (prov["provider"], prov["repository"], prov["actor_id"]) == (
        "activestate",
        "fakeorg/fakeproject",
        ACTOR_ID,
    )
