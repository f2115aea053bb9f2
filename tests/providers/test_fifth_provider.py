"""A fifth provider is one module plus one line in the registry (DESIGN.md, "Providers and
publishers"): a test-only provider, added to a copy of ``trustpub.providers.PROVIDERS``, gets
its ``publisher add`` subcommand, its admin API fields, its registration (keys, merge of pinned
ids), its description and its matching, without a change anywhere else."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pytest

from trustpub.providers import PROVIDERS, by_name, rules
from trustpub.providers.base import OPT_STR, STR, Option, Provider, owner_id_options
from trustpub.providers.rules import Claims, RegistrationError, Spec, claim_str, quote
from trustpub.registry import cli, publisherfields

ISSUER = "https://forge.example.test"
_REPO = re.compile(r"[a-z0-9-]{1,40}/[a-z0-9-]{1,40}")


def _check_repo(spec: Spec, claims: Claims) -> rules.RuleResult:
    claim = claim_str(claims, "repo")
    if claim != spec["repo"]:
        return rules.failed("repo", spec["repo"], claim, f"repo {quote(claim)} is not {quote(spec['repo'])}")
    return rules.passed("repo", spec["repo"], claim)


def _build_spec(values: Mapping[str, Any]) -> dict[str, Any]:
    repo = values["repo"].strip()
    if not _REPO.fullmatch(repo):
        raise RegistrationError(f"repo {quote(repo)} is not owner/name")
    rules.owner_id_or_pinning(
        values["org_id"],
        pin_on_first_use=values["pin_on_first_use"],
        flag="--org-id",
        where="the forge's API",
    )
    return {
        "repo": repo,
        "org_id": values["org_id"] or None,
        "job": values["job"],
        **rules.constraints((), values["token_lifetime"]),
    }


FORGE = Provider(
    name="forge",
    title="Forge",
    cli_help="a Forge job",
    issuer=ISSUER,
    table={
        "repo": _check_repo,
        "org_id": rules.pinned_id("org_id", "org_id", "org id", "", re.compile(r"[0-9]{1,20}")),
    },
    lookup_key=lambda claims: claim_str(claims, "repo"),
    identity=lambda claims: f"forge repo {claims.get('repo')}",
    provenance=lambda claims: {"provider": "forge", "repository": rules.claim_text(claims, "repo")},
    narrowing_field="job",
    pinned_fields=(("org_id", "org_id"),),
    addressed_by=("repo",),
    owner_field="org_id",
    owner_name_field="repo",
    options=(
        Option("repo", STR, "the repository, owner/name", required=True),
        *owner_id_options("org_id", "the organization's numeric id"),
        Option("job", STR, "the job (default: any)"),
        Option("label", OPT_STR, "shown only"),
    ),
    build_spec=_build_spec,
    spec_lookup_key=lambda spec: str(spec["repo"]),
    unique_parts=lambda spec: [spec["repo"], spec["job"]],
    describe=lambda spec: [f"  repo         {spec['repo']}", f"  job          {spec['job'] or '(any)'}"],
    summary=lambda spec: f"{spec['repo']}  job={spec['job'] or '*'}",
)
# The one line a fifth provider adds to trustpub.providers.PROVIDERS, here in a copy.
REGISTRY: Mapping[str, Provider] = {**PROVIDERS, FORGE.name: FORGE}


def test_registry_is_one_place():
    assert list(PROVIDERS) == ["github", "gitlab", "google", "activestate"]
    assert by_name("github") is PROVIDERS["github"]
    assert by_name("forge") is None
    assert by_name("forge", REGISTRY) is FORGE


def test_cli_parser_description_and_registration():
    args = cli.build_parser(REGISTRY).parse_args(
        ["publisher", "add", "forge", "--project", "demo", "--repo", "octo/demo", "--org-id", "42",
         "--token-lifetime", "600", "--registrant", "alice"]
    )  # fmt: skip
    assert (args.provider, args.projects, args.issuer) == ("forge", ["demo"], ISSUER)
    new = cli.new_publisher(args, REGISTRY)
    assert (new.provider, new.issuer, new.lookup_key, new.registrant) == (
        "forge",
        ISSUER,
        "octo/demo",
        "alice",
    )
    assert new.spec == {"repo": "octo/demo", "org_id": "42", "job": "", "token_lifetime": 600}
    assert json.loads(new.unique_key) == ["forge", ISSUER, "octo/demo", ""]
    assert not new.needs_confirmation  # the registry's PROVIDERS does not know "forge"
    assert cli.identity_lines("forge", new.spec, REGISTRY) == [
        "  repo         octo/demo",
        "  job          (any)",
        "  lifetime     600 s",
    ]
    assert cli.identity_short("forge", new.spec, REGISTRY) == "octo/demo  job=*"
    # The shared merge: an open id is pinned, a different one refused.
    assert new.merge({**new.spec, "org_id": None}, new.spec) == {"org_id": "42"}
    with pytest.raises(RegistrationError, match="org id 7, not 42"):
        new.merge({**new.spec, "org_id": "7"}, new.spec)
    # The owner's id is required unless pinned on first use, as for GitHub and GitLab.
    open_args = cli.build_parser(REGISTRY).parse_args(
        ["publisher", "add", "forge", "--project", "demo", "--repo", "octo/demo", "--pin-on-first-use"]
    )
    assert FORGE.owner_open(cli.new_publisher(open_args, REGISTRY).spec)
    with pytest.raises(RegistrationError, match="--org-id is required"):
        cli.new_publisher(
            cli.build_parser(REGISTRY).parse_args(
                ["publisher", "add", "forge", "--project", "p", "--repo", "a/b"]
            ),
            REGISTRY,
        )


def test_admin_api_fields_and_publishers_file():
    body = {"provider": "forge", "projects": ["demo"], "repo": "octo/demo", "org_id": "42", "job": "build"}
    reg = publisherfields.registration(body, registrant="api", providers=REGISTRY)
    assert (reg.new.provider, reg.new.registrant, reg.projects) == ("forge", "api", ["demo"])
    assert FORGE.registration_fields(reg.new.spec) == {"org_id": "42", "repo": "octo/demo", "job": "build"}
    with pytest.raises(publisherfields.FieldErrors) as refused:
        publisherfields.registration({**body, "owner": "x"}, registrant="api", providers=REGISTRY)
    assert refused.value.errors == {"owner": "is not a field of a forge publisher"}
    with pytest.raises(publisherfields.FieldErrors):
        publisherfields.registration(body, registrant="api")  # not in the real registry


def test_matching():
    spec = _build_spec({"repo": "octo/demo", "org_id": None, "job": "", "pin_on_first_use": True,
                        "token_lifetime": None})  # fmt: skip
    claims = {"repo": "octo/demo", "org_id": "42"}
    assert FORGE.lookup_key(claims) == FORGE.spec_lookup_key(spec)
    assert rules.all_passed(FORGE.evaluate(spec, claims))
    assert FORGE.pins(spec, claims) == {"org_id": "42"}
    assert FORGE.owner_claim == "org_id"
    assert not rules.all_passed(FORGE.evaluate(spec, {**claims, "repo": "octo/other"}))
