"""GitLab CI/CD: the claim rules of a GitLab trusted publisher, and its registration rules.

For gitlab.com and for self-managed instances that the operator registers as issuers
(provider "gitlab" in the issuers file); a publisher names its issuer and matches only
tokens from it (the registry looks candidates up by issuer).

A publisher's ``spec`` (stored as JSON) holds::

    namespace, project          the project's path, e.g. "my-group/sub" and "my-project"
    ci_config_path              top-level pipeline file, e.g. ".gitlab-ci.yml"
    environment                 GitLab environment, "" = any (case-sensitive, as typed)
    namespace_id, project_id    immutable numeric ids, or null = pin on first use (a namespace
                                id only with --pin-on-first-use; mints once confirmed)
    allowed_refs                optional: refs (or patterns) the ``ref_path`` must be
    token_lifetime              optional: seconds the minted token lives (300..3600)

Rules follow Warehouse (warehouse/oidc/models/gitlab.py), with deliberate differences:
- ``namespace_id`` and ``project_id`` are bound, pinned on first use when not given, so a
  deleted and re-registered namespace of the same name cannot publish (PyPI #15643);
- the ``ci_config_ref_uri`` comparison is exact, but its project part is the token's own
  ``project_path`` (which the ``project_path`` rule compares case-insensitively with the
  registered one): Warehouse builds it from the registered spelling, so a publisher
  registered as "My-Group/Proj" fails there against GitLab's canonical "my-group/proj";
- the domain in ``ci_config_ref_uri`` is the token's issuer host (gitlab.com, or the
  self-managed instance's), not always gitlab.com.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from trustpub.messages import InvalidPublisher
from trustpub.providers import rules
from trustpub.providers.base import ALLOWED_REFS, OPT_STR, STR, Option, Provider, owner_id_options
from trustpub.providers.rules import (
    Check,
    Claims,
    RegistrationError,
    RuleResult,
    Spec,
    ascii_lower,
    claim_str,
    failed,
    optional_str,
    passed,
    quote,
)

NAME = "gitlab"

# A GitLab project path: ASCII segments of letters, digits and "_.+-", at least two
# segments (namespace and project). fullmatch, explicit ASCII ranges: no look-alikes.
_PROJECT_PATH_CLAIM = re.compile(r"[A-Za-z0-9_.+-]{1,255}(?:/[A-Za-z0-9_.+-]{1,255}){1,20}")
_NUMERIC_ID = re.compile(r"[0-9]{1,20}")

# Registration (PyPI's form rules, warehouse/oidc/forms/gitlab.py).
_NAMESPACE_INPUT = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_./+-]*[a-zA-Z0-9]")
_PROJECT_INPUT = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*[a-zA-Z0-9]")
_CONSECUTIVE_SPECIAL = re.compile(r"[._-]{2}")
_ENVIRONMENT_INPUT = re.compile(r"[a-zA-Z0-9\-_/${} ]+")

# The claims every GitLab ID token carries and the rules read.
REQUIRED_CLAIMS = (
    "iss",
    "sub",
    "project_path",
    "ci_config_ref_uri",
    "ref_path",
    "sha",
    "namespace_id",
    "project_id",
)

_PINNED_FIELDS = (("namespace_id", "namespace_id"), ("project_id", "project_id"))

ISSUER = "https://gitlab.com"


def issuer_domain(iss: str) -> str:
    """The host (and path, for an instance under a relative URL root) GitLab puts in
    ``ci_config_ref_uri``: the issuer URL without its scheme and trailing slash."""
    return iss.removeprefix("https://").rstrip("/")


# --- claim rules ------------------------------------------------------------------------


def _registered_path(spec: Spec) -> str:
    return f"{spec['namespace']}/{spec['project']}"


def _check_sub(spec: Spec, claims: Claims) -> RuleResult:
    sub = claim_str(claims, "sub")
    expected = f"project_path:{_registered_path(spec)}"
    # project_path:NS/PROJ:ref_type:branch:ref:main -> "project_path:NS/PROJ"; neither the
    # namespace nor the project can contain ":".
    prefix = ":".join(sub.split(":", 2)[:2])
    if not sub.startswith("project_path:"):
        return failed(
            "sub",
            expected + ":...",
            sub,
            f"sub {quote(sub)} is not of the form project_path:NAMESPACE/PROJECT:...",
        )
    if ascii_lower(prefix) != ascii_lower(expected):
        return failed(
            "sub",
            expected + ":...",
            sub,
            f"sub {quote(sub)} does not begin with the registered {quote(expected)}",
        )
    return passed("sub", expected + ":...", sub)


def _check_project_path(spec: Spec, claims: Claims) -> RuleResult:
    claim = claim_str(claims, "project_path")
    expected = _registered_path(spec)
    if not _PROJECT_PATH_CLAIM.fullmatch(claim):
        return failed(
            "project_path",
            expected,
            claim,
            f"project_path {quote(claim)} is not of the form namespace/project",
        )
    # GitLab paths are case-insensitive; fold ASCII only (see rules.ascii_lower).
    if ascii_lower(claim) != ascii_lower(expected):
        return failed(
            "project_path",
            expected,
            claim,
            f"project_path {quote(claim)} is not the registered project {quote(expected)}",
        )
    return passed("project_path", expected, claim)


def _check_ci_config_ref_uri(spec: Spec, claims: Claims) -> RuleResult:
    uri = claim_str(claims, "ci_config_ref_uri")
    ref_path = claim_str(claims, "ref_path")
    sha = claim_str(claims, "sha")
    project_path = claim_str(claims, "project_path")
    path = str(spec["ci_config_path"])
    base = f"{issuer_domain(claim_str(claims, 'iss'))}/{project_path}//{path}@"
    expected = base + (ref_path or sha)
    if not uri:
        return failed("ci_config_ref_uri", expected, "", "the ci_config_ref_uri claim is empty")
    if not ref_path or not sha:
        # Both are needed: a pipeline always runs at a ref and a commit (Warehouse agrees).
        return failed(
            "ci_config_ref_uri",
            expected,
            uri,
            f"the token's ref_path {quote(ref_path)} and sha {quote(sha)} must both be non-empty",
        )
    if uri in (base + ref_path, base + sha):
        return passed("ci_config_ref_uri", expected, uri)
    head, sep, rest = uri.partition("//")
    if not sep or not rest.startswith(path + "@"):
        why = f"ci_config_ref_uri {quote(uri)} does not name the registered pipeline file {quote(path)}"
    elif head != base.partition("//")[0]:
        why = (
            f"ci_config_ref_uri {quote(uri)} is not a pipeline of the token's project "
            f"{quote(base.partition('//')[0])}"
        )
    else:
        why = (
            f"ci_config_ref_uri {quote(uri)} is not at the token's ref_path {quote(ref_path)} "
            f"or sha {quote(sha)}"
        )
    return failed("ci_config_ref_uri", expected, uri, why)


def _check_environment(spec: Spec, claims: Claims) -> RuleResult:
    required = str(spec.get("environment") or "")
    claim = optional_str(claims, "environment")
    if not required:
        return passed("environment", "any", claim or "")
    if not claim:
        return failed(
            "environment",
            required,
            "",
            f"the token carries no environment; the publisher requires {quote(required)}",
        )
    # GitLab environment names are case-sensitive: exact comparison, as Warehouse does.
    if claim != required:
        return failed(
            "environment",
            required,
            claim,
            f"environment {quote(claim)} does not match the registered environment {quote(required)} "
            "(GitLab environments are case-sensitive)",
        )
    return passed("environment", required, claim)


RULES: dict[str, Check] = {
    "sub": _check_sub,
    "project_path": _check_project_path,
    "ci_config_ref_uri": _check_ci_config_ref_uri,
    "namespace_id": rules.pinned_id(
        "namespace_id",
        "namespace_id",
        "namespace id",
        " (the namespace may have been deleted and its name taken by someone else)",
        _NUMERIC_ID,
    ),
    "project_id": rules.pinned_id(
        "project_id",
        "project_id",
        "project id",
        " (the project may have been deleted and its path taken by another one)",
        _NUMERIC_ID,
    ),
    "environment": _check_environment,
    "allowed_refs": rules.allowed_refs_rule("ref_path"),
}


# --- the provider interface ---------------------------------------------------------------


def lookup_key(claims: Claims) -> str:
    """The lower-cased ``namespace/project`` of the token.

    Raises:
        InvalidPublisher: a required claim is missing or not a string, or ``project_path``
            is not an ASCII ``namespace/project``.
    """
    for name in REQUIRED_CLAIMS:
        claim_str(claims, name)
    path = claim_str(claims, "project_path")
    if not _PROJECT_PATH_CLAIM.fullmatch(path):
        raise InvalidPublisher(f"project_path {quote(path)} is not of the form namespace/project")
    return ascii_lower(path)


def identity(claims: Claims) -> str:
    value = claims.get("project_path")
    if isinstance(value, str) and _PROJECT_PATH_CLAIM.fullmatch(value):
        return f"GitLab project {value}"
    return "this GitLab project"


def provenance(claims: Claims) -> dict[str, str]:
    """What a minted token records about its source (strings; "" when absent)."""

    def text(name: str) -> str:
        return rules.claim_text(claims, name)

    uri = text("ci_config_ref_uri")
    _, _, rest = uri.partition("//")
    return {
        "provider": NAME,
        "issuer": text("iss"),
        "repository": text("project_path"),
        "repository_id": text("project_id"),
        "owner_id": text("namespace_id"),
        "workflow": rest.split("@", 1)[0],
        "workflow_ref": uri,
        "ref": text("ref_path"),
        "sha": text("sha"),
        "run_id": text("pipeline_id"),
        "job_id": text("job_id"),
        "environment": text("environment"),
        "event_name": text("pipeline_source"),
    }


# --- registration -----------------------------------------------------------------------


def _path_part(value: str, what: str, pattern: re.Pattern[str]) -> str:
    value = value.strip()
    if not pattern.fullmatch(value) or len(value) > 255:
        raise RegistrationError(
            f"{what} {quote(value)} is not a GitLab {what} (ASCII letters and digits, with "
            f"{'_ . - + /' if what == 'namespace' else '_ . -'} inside; "
            "starting and ending with a letter or digit)"
        )
    if _CONSECUTIVE_SPECIAL.search(value) or "//" in value:
        raise RegistrationError(f"{what} {quote(value)} must not contain two special characters in a row")
    if value.endswith((".git", ".atom")):
        raise RegistrationError(f"{what} {quote(value)} must not end in .git or .atom")
    return value


def _numeric_id(value: str | None, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not _NUMERIC_ID.fullmatch(value):
        raise RegistrationError(f"{what} must be GitLab's numeric id (digits only), got {quote(value)}")
    return value


def _ci_config_path(value: str) -> str:
    path = value.strip()
    if not path.endswith((".yml", ".yaml")) or path.rsplit("/", 1)[-1] in {".yml", ".yaml"}:
        raise RegistrationError(f"pipeline file {quote(path)} must be a path ending in .yml or .yaml")
    if path.startswith("/") or path.endswith("/"):
        raise RegistrationError(
            f"pipeline file {quote(path)} must be relative to the repository root, without a leading '/'"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path) or "\\" in path:
        raise RegistrationError(f"pipeline file {quote(path)} must not contain control characters or '\\'")
    return path


def _environment(value: str) -> str:
    if not value.strip():
        return ""
    if len(value) > 255 or not _ENVIRONMENT_INPUT.fullmatch(value):
        raise RegistrationError(
            f"environment {quote(value)} may hold only letters, digits, spaces and - _ / $ {{ }} "
            "(at most 255 characters)"
        )
    # As typed: GitLab environments are case-sensitive.
    return value


def validate_spec(  # noqa: PLR0913  (one argument per registered field)
    *,
    namespace: str,
    project: str,
    ci_config_path: str,
    environment: str = "",
    namespace_id: str | None = None,
    project_id: str | None = None,
    allowed_refs: Iterable[str] = (),
    token_lifetime: int | None = None,
    pin_on_first_use: bool = False,
) -> dict[str, Any]:
    """Check registration input (PyPI's form rules) and return the spec to store.

    ``namespace_id`` is required unless ``pin_on_first_use`` (see
    :func:`rules.owner_id_or_pinning`).

    Raises:
        RegistrationError: a field is malformed, or could never match a GitLab token.
    """
    spec = {
        "namespace": _path_part(namespace, "namespace", _NAMESPACE_INPUT),
        "project": _path_part(project, "project", _PROJECT_INPUT),
        "ci_config_path": _ci_config_path(ci_config_path),
        "environment": _environment(environment),
        "namespace_id": _numeric_id(namespace_id, "namespace id"),
        "project_id": _numeric_id(project_id, "project id"),
        **rules.constraints(allowed_refs, token_lifetime),
    }
    rules.owner_id_or_pinning(
        namespace_id,
        pin_on_first_use=pin_on_first_use,
        flag="--namespace-id",
        where="the id field of GitLab's GET /api/v4/namespaces/PATH",
    )
    return spec


def split_project_path(value: str) -> tuple[str, str]:
    """``group/sub/project`` -> ("group/sub", "project").

    Raises:
        RegistrationError: no "/" in it.
    """
    namespace, sep, project = value.strip().rpartition("/")
    if not sep or not namespace or not project:
        raise RegistrationError(
            f"project path {quote(value)} must be NAMESPACE/PROJECT, e.g. my-group/my-project"
        )
    return namespace, project


def spec_lookup_key(spec: Spec) -> str:
    """The lookup key of a registered spec; equals :func:`lookup_key` of matching claims."""
    return ascii_lower(_registered_path(spec))


def unique_parts(spec: Spec) -> list[object]:
    """What makes two GitLab publishers of one issuer the same one: the project path
    (case-insensitive), the pipeline file (exact) and the environment (exact)."""
    return [spec_lookup_key(spec), str(spec["ci_config_path"]), str(spec["environment"])]


def build_spec(values: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`validate_spec` of ``trustpub publisher add gitlab``'s options."""
    namespace, project = split_project_path(values["project_path"])
    return validate_spec(
        namespace=namespace,
        project=project,
        ci_config_path=values["ci_config_path"],
        environment=values["environment"],
        namespace_id=values["namespace_id"],
        project_id=values["project_id"],
        allowed_refs=values["allowed_refs"],
        token_lifetime=values["token_lifetime"],
        pin_on_first_use=values["pin_on_first_use"],
    )


def file_fields(spec: Spec) -> dict[str, Any]:
    """A publishers file gives the project path whole."""
    return {"project_path": _registered_path(spec)}


# --- description --------------------------------------------------------------------------


def describe(spec: Spec) -> list[str]:
    ns_id = spec.get("namespace_id") or "pinned by the first token"
    proj_id = spec.get("project_id") or "pinned on first use"
    return [
        f"  project path {spec['namespace']}/{spec['project']}",
        f"  ids          namespace {ns_id}, project {proj_id}",
        f"  pipeline     {spec['ci_config_path']}",
        f"  environment  {spec.get('environment') or '(any)'}",
    ]


def summary(spec: Spec) -> str:
    env = spec.get("environment") or "*"
    return f"{spec['namespace']}/{spec['project']}  {spec['ci_config_path']}  env={env}"


PROVIDER = Provider(
    name=NAME,
    title="GitLab",
    cli_help="a GitLab CI/CD pipeline (gitlab.com or self-managed)",
    issuer=ISSUER,
    issuer_settings={"max_lifetime": 7200},
    requires_jti=True,
    table=RULES,
    lookup_key=lookup_key,
    identity=identity,
    provenance=provenance,
    narrowing_field="environment",
    pinned_fields=_PINNED_FIELDS,
    addressed_by=("ci_config_ref_uri",),
    owner_field="namespace_id",
    owner_name_field="namespace",
    options=(
        ALLOWED_REFS,
        Option("project_path", STR, "GitLab project path: NAMESPACE/PROJECT", required=True),
        *owner_id_options("namespace_id", "namespace's numeric id"),
        Option("project_id", OPT_STR, "GitLab project's numeric id (default: pinned on first use)"),
        Option("ci_config_path", STR, "top-level pipeline file, e.g. .gitlab-ci.yml", required=True),
        Option("environment", STR, "GitLab environment required, case-sensitive (default: any)"),
    ),
    build_spec=build_spec,
    spec_lookup_key=spec_lookup_key,
    unique_parts=unique_parts,
    describe=describe,
    summary=summary,
    file_fields=file_fields,
)
