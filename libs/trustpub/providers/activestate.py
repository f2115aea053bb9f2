"""ActiveState: the claim rules of an ActiveState publisher, and its registration rules.

A publisher's ``spec`` (stored as JSON) holds::

    organization     the organization's URL name
    project          the ActiveState project's name
    actor_id         the ActiveState user who may publish (a UUID), exact
    actor            that user's name, for display only (not checked: names can change)
    token_lifetime   optional: seconds the minted token lives (300..3600)

Rules follow Warehouse (warehouse/oidc/models/activestate.py): ``organization``,
``project`` and ``actor_id`` exact; ``sub`` must begin ``org:<organization>:project:<project>``;
``builder`` must be ``pypi-publisher`` (ActiveState's builder for PyPI uploads: a token minted
for another of its builders is not meant for an index). Warehouse resolves ``actor_id`` from
the user name over ActiveState's API at registration; trustpub makes no outside call at
registration, so the operator gives the id.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trustpub.providers import rules
from trustpub.providers.base import STR, Option, Provider
from trustpub.providers.rules import (
    Check,
    Claims,
    RegistrationError,
    RuleResult,
    Spec,
    claim_str,
    failed,
    passed,
    quote,
)

NAME = "activestate"
ISSUER = "https://platform.activestate.com/api/v1/oauth/oidc"
BUILDER = "pypi-publisher"

# Registration (PyPI's form rules, warehouse/oidc/forms/activestate.py): project names are
# 3-40 of [.a-zA-Z0-9-], no "--", no leading or trailing "-".
_PROJECT_INPUT = re.compile(r"[.a-zA-Z0-9-]{3,40}")
# Organization URL names: ASCII without ":" (it separates the parts of ``sub``) or "/".
_ORGANIZATION_INPUT = re.compile(r"[A-Za-z0-9._-]{1,100}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ACTOR_INPUT = re.compile(r"[!-~]{1,100}")


# --- claim rules ------------------------------------------------------------------------


def _exact(rule: str, field: str, what: str) -> Check:
    def check(spec: Spec, claims: Claims) -> RuleResult:
        claim = claim_str(claims, rule)
        expected = str(spec[field])
        if claim != expected:
            return failed(
                rule, expected, claim, f"{rule} {quote(claim)} is not the registered {what} {quote(expected)}"
            )
        return passed(rule, expected, claim)

    return check


def _check_sub(spec: Spec, claims: Claims) -> RuleResult:
    sub = claim_str(claims, "sub")
    expected = f"org:{spec['organization']}:project:{spec['project']}"
    parts = sub.split(":")
    if len(parts) < 4 or parts[0] != "org" or parts[2] != "project":
        return failed(
            "sub", expected, sub, f"sub {quote(sub)} is not of the form org:ORGANIZATION:project:PROJECT"
        )
    if ":".join(parts[:4]) != expected:
        return failed(
            "sub", expected, sub, f"sub {quote(sub)} does not begin with the registered {quote(expected)}"
        )
    return passed("sub", expected, sub)


def _check_builder(spec: Spec, claims: Claims) -> RuleResult:  # noqa: ARG001  (table signature)
    claim = claim_str(claims, "builder")
    if claim != BUILDER:
        return failed(
            "builder",
            BUILDER,
            claim,
            f"builder {quote(claim)} is not {quote(BUILDER)}, ActiveState's PyPI publisher",
        )
    return passed("builder", BUILDER, claim)


RULES: dict[str, Check] = {
    "sub": _check_sub,
    "organization": _exact("organization", "organization", "organization"),
    "project": _exact("project", "project", "ActiveState project"),
    "actor_id": _exact("actor_id", "actor_id", "actor id"),
    "builder": _check_builder,
}

REQUIRED_CLAIMS = ("sub", "organization", "project", "actor_id", "builder")


# --- the provider interface ---------------------------------------------------------------


def lookup_key(claims: Claims) -> str:
    """``organization/project`` of the token, exactly.

    Raises:
        InvalidPublisher: a required claim is missing or not a string.
    """
    for name in REQUIRED_CLAIMS:
        claim_str(claims, name)
    return f"{claim_str(claims, 'organization')}/{claim_str(claims, 'project')}"


def identity(claims: Claims) -> str:
    org, project = claims.get("organization"), claims.get("project")
    if isinstance(org, str) and isinstance(project, str) and f"{org}/{project}".isascii():
        return f"ActiveState project {org}/{project}"
    return "this ActiveState project"


def provenance(claims: Claims) -> dict[str, str]:
    def text(name: str) -> str:
        return rules.claim_text(claims, name)

    return {
        "provider": NAME,
        "issuer": text("iss"),
        "repository": f"{text('organization')}/{text('project')}",
        "repository_id": text("project_id"),
        "owner_id": text("organization_id"),
        "actor": text("actor"),
        "actor_id": text("actor_id"),
        "artifact_id": text("artifact_id"),
        "ingredient": text("ingredient"),
    }


# --- registration -----------------------------------------------------------------------


def validate_spec(
    *, organization: str, project: str, actor_id: str, actor: str = "", token_lifetime: int | None = None
) -> dict[str, Any]:
    """Check registration input (PyPI's form rules) and return the spec to store.

    Raises:
        RegistrationError: a field is malformed, or could never match an ActiveState token.
    """
    organization = organization.strip()
    if not _ORGANIZATION_INPUT.fullmatch(organization):
        raise RegistrationError(
            f"organization {quote(organization)} is not an ActiveState organization name "
            "(1-100 ASCII letters, digits, '.', '_', '-')"
        )
    project = project.strip()
    if (
        not _PROJECT_INPUT.fullmatch(project)
        or "--" in project
        or project.startswith("-")
        or project.endswith("-")
    ):
        raise RegistrationError(
            f"ActiveState project {quote(project)} must be 3-40 letters, digits, '.' and '-', without '--' "
            "and not beginning or ending with '-'"
        )
    actor_id = actor_id.strip().lower()
    if not _UUID.fullmatch(actor_id):
        raise RegistrationError(f"actor id {quote(actor_id)} must be the ActiveState user's id (a UUID)")
    actor = actor.strip()
    if actor and not _ACTOR_INPUT.fullmatch(actor):
        raise RegistrationError(f"actor {quote(actor)} must be an ActiveState user name")
    return {
        "organization": organization,
        "project": project,
        "actor_id": actor_id,
        "actor": actor,
        **rules.constraints((), token_lifetime),
    }


def spec_lookup_key(spec: Spec) -> str:
    return f"{spec['organization']}/{spec['project']}"


def unique_parts(spec: Spec) -> list[object]:
    """The organization, project and actor id, with the issuer (Warehouse's unique constraint)."""
    return [spec["organization"], spec["project"], spec["actor_id"]]


def build_spec(values: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`validate_spec` of ``trustpub publisher add activestate``'s options."""
    return validate_spec(
        organization=values["organization"],
        project=values["activestate_project"],
        actor_id=values["actor_id"],
        actor=values["actor"],
        token_lifetime=values["token_lifetime"],
    )


def file_fields(spec: Spec) -> dict[str, Any]:
    """A publishers file names the ActiveState project apart from trustpub's projects."""
    return {"activestate_project": spec["project"]}


# --- description --------------------------------------------------------------------------


def describe(spec: Spec) -> list[str]:
    actor = f" ({spec['actor']})" if spec.get("actor") else ""
    return [
        f"  project      {spec['organization']}/{spec['project']}",
        f"  actor id     {spec['actor_id']}{actor}",
    ]


def summary(spec: Spec) -> str:
    return f"{spec['organization']}/{spec['project']}  actor={spec['actor_id']}"


PROVIDER = Provider(
    name=NAME,
    title="ActiveState",
    cli_help="an ActiveState Platform project",
    issuer=ISSUER,
    table=RULES,
    lookup_key=lookup_key,
    identity=identity,
    provenance=provenance,
    addressed_by=("actor_id",),
    options=(
        Option("organization", STR, "ActiveState organization (URL name)", required=True),
        Option("activestate_project", STR, "ActiveState project name", required=True),
        Option("actor_id", STR, "id (UUID) of the ActiveState user who publishes", required=True),
        Option("actor", STR, "that user's name (shown only)"),
    ),
    build_spec=build_spec,
    spec_lookup_key=spec_lookup_key,
    unique_parts=unique_parts,
    describe=describe,
    summary=summary,
    file_fields=file_fields,
)
