"""GitHub Actions: the claim rules of a GitHub trusted publisher, and its registration rules.

A publisher's ``spec`` (stored as JSON) holds::

    owner, owner_id            owner login; its immutable numeric id, or null = pin on first use
                               (registered with --pin-on-first-use; mints once confirmed)
    repository, repository_id  repository name; its numeric id, or null = pin on first use
    workflow                   workflow file name, e.g. "release.yml"
    environment                GitHub environment, "" = any (ASCII, stored lower-cased)
    allowed_reusable_workflows ["owner/repo/.github/workflows/file.yml" or ".../file.yml@ref"]
    allowed_events             may contain "pull_request_target", "workflow_run"
    allowed_refs               optional: refs (or refs/tags/v* patterns) the ``ref`` must be
    token_lifetime             optional: seconds the minted token lives (300..3600)

Differences from Warehouse (warehouse/oidc/models/github.py), deliberate:
- the registered workflow is matched against the caller's ``workflow_ref``; a different
  ``job_workflow_ref`` (a reusable workflow runs the job) must be explicitly allowed;
- owner and repository names compare case-insensitively (GitHub treats them so), but only
  after the claim passed an ASCII-only pattern: no Unicode look-alike, no NFKC folding;
- ``repository_id`` is bound as well as ``repository_owner_id``, both pinned on first use
  when not given at registration;
- ``workflow_run`` is refused like ``pull_request_target`` unless the publisher opts in.
``sub`` is deliberately not checked: repositories can customise GitHub's subject template
(Warehouse PR #19422 removed its check after it broke publishing).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from trustpub.messages import InvalidPublisher
from trustpub.providers import rules
from trustpub.providers.base import (
    ALLOWED_REFS,
    OPT_STR,
    STR,
    STRS,
    Option,
    Provider,
    keyword_spec,
    owner_id_options,
)
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

NAME = "github"
ISSUER = "https://token.actions.githubusercontent.com"

# GitHub's own limits: logins are 1-39 of [A-Za-z0-9-], repository names 1-100 of
# [A-Za-z0-9._-]. Explicit ASCII ranges and fullmatch: "\u043e" (Cyrillic o), fullwidth
# letters, the Kelvin sign or a trailing newline never match.
_REPOSITORY_CLAIM = re.compile(r"[A-Za-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}")
_OWNER_CLAIM = re.compile(r"[A-Za-z0-9-]{1,39}")
# GitHub ids are positive integers, sent as decimal strings.
_NUMERIC_ID = re.compile(r"[0-9]{1,20}")
# The ref part of a reusable workflow's job_workflow_ref: a full ref name or a commit sha.
_WORKFLOW_REF_PART = re.compile(r"refs/[!-~]+|[0-9a-f]{40}|[0-9a-f]{64}")

# Registration (PyPI's form rules, warehouse/oidc/forms/github.py).
_OWNER_INPUT = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9-]*")
_REPOSITORY_INPUT = re.compile(r"[a-zA-Z0-9-_.]+")
_ENVIRONMENT_FORBIDDEN = frozenset("'\"`,;\\")
_REUSABLE_INPUT = re.compile(
    r"(?P<repo>[A-Za-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100})/\.github/workflows/"
    r"(?P<file>[^/@\s]+\.ya?ml)(?:@(?P<ref>[!-~]+))?"
)

# The claims every GitHub Actions ID token carries and the rules read.
REQUIRED_CLAIMS = (
    "repository",
    "repository_owner",
    "repository_owner_id",
    "repository_id",
    "workflow_ref",
    "job_workflow_ref",
    "ref",
    "sha",
    "event_name",
)

# Events whose workflows run with the repository's secrets (and id-token permission) on
# behalf of code the repository did not vet; refused unless the publisher opts in.
GUARDED_EVENTS: dict[str, str] = {
    "pull_request_target": (
        "pull_request_target workflows run with the base repository's secrets and OIDC permission "
        "while they may check out untrusted code from the pull request (a 'pwn request')"
    ),
    "workflow_run": (
        "workflow_run workflows run with the repository's secrets after a workflow that untrusted "
        "code, such as a pull request from a fork, may have triggered"
    ),
}

_PINNED_FIELDS = (("owner_id", "repository_owner_id"), ("repository_id", "repository_id"))
_OPTION_FIELDS = ("allowed_reusable_workflows", "allowed_events")


# --- claim rules ------------------------------------------------------------------------


def _registered_repository(spec: Spec) -> str:
    return f"{spec['owner']}/{spec['repository']}"


def _check_repository(spec: Spec, claims: Claims) -> RuleResult:
    claim = claim_str(claims, "repository")
    expected = _registered_repository(spec)
    if not _REPOSITORY_CLAIM.fullmatch(claim):
        return failed(
            "repository", expected, claim, f"repository {quote(claim)} is not of the form owner/name"
        )
    if ascii_lower(claim) != ascii_lower(expected):
        return failed(
            "repository",
            expected,
            claim,
            f"repository {quote(claim)} is not the registered repository {quote(expected)}",
        )
    return passed("repository", expected, claim)


def _check_owner(spec: Spec, claims: Claims) -> RuleResult:
    claim = claim_str(claims, "repository_owner")
    expected = str(spec["owner"])
    if not _OWNER_CLAIM.fullmatch(claim):
        return failed(
            "repository_owner", expected, claim, f"repository_owner {quote(claim)} is not a GitHub login"
        )
    if ascii_lower(claim) != ascii_lower(expected):
        return failed(
            "repository_owner",
            expected,
            claim,
            f"repository_owner {quote(claim)} is not the registered owner {quote(expected)}",
        )
    return passed("repository_owner", expected, claim)


def _check_workflow_ref(spec: Spec, claims: Claims) -> RuleResult:
    workflow_ref = claim_str(claims, "workflow_ref")
    repository = claim_str(claims, "repository")
    ref = claim_str(claims, "ref")
    sha = claim_str(claims, "sha")
    workflow = str(spec["workflow"])
    tail = f"/.github/workflows/{workflow}@"
    expected = f"{repository}{tail}{ref or sha}"
    for suffix in (ref, sha):
        if not suffix or not workflow_ref.endswith(tail + suffix):
            continue
        # The repository part compares case-insensitively (ASCII only); the file name and
        # the ref compare exactly, as the endswith above did.
        if ascii_lower(workflow_ref[: -len(tail + suffix)]) == ascii_lower(repository):
            return passed("workflow_ref", expected, workflow_ref)
    prefix, found, _ = workflow_ref.partition(tail)
    if not found:
        why = f"workflow_ref {quote(workflow_ref)} does not name the registered workflow {quote(workflow)}"
    elif ascii_lower(prefix) != ascii_lower(repository):
        why = (
            f"workflow_ref {quote(workflow_ref)} is not a workflow of the token's repository "
            f"{quote(repository)}"
        )
    else:
        refs = " or ".join(f"{name} {quote(v)}" for name, v in (("ref", ref), ("sha", sha)) if v) or "no ref"
        why = f"workflow_ref {quote(workflow_ref)} is not at the token's {refs}"
    return failed("workflow_ref", expected, workflow_ref, why)


def _split_repository(value: str) -> tuple[str, str] | None:
    """``owner/repo/rest`` -> ("owner/repo", "rest"), when the repository part is well formed."""
    parts = value.split("/", 2)
    if len(parts) != 3:
        return None
    repo = f"{parts[0]}/{parts[1]}"
    if not _REPOSITORY_CLAIM.fullmatch(repo):
        return None
    return repo, parts[2]


def _reusable_allowed(entry: str, job_workflow_ref: str) -> bool:
    want = _split_repository(entry)
    got = _split_repository(job_workflow_ref)
    if want is None or got is None or ascii_lower(want[0]) != ascii_lower(got[0]):
        return False
    want_path, got_rest = want[1], got[1]
    if "@" in want_path:
        # Registered with "@ref": exactly that ref.
        return got_rest == want_path
    # Registered without a ref: any ref of exactly that file. The remainder must look like
    # a ref so that "file.yml" does not admit a sibling file named "file.yml@x.yml".
    head = want_path + "@"
    return got_rest.startswith(head) and bool(_WORKFLOW_REF_PART.fullmatch(got_rest[len(head) :]))


def _check_job_workflow_ref(spec: Spec, claims: Claims) -> RuleResult:
    job = claim_str(claims, "job_workflow_ref")
    caller = claim_str(claims, "workflow_ref")
    if job == caller:
        return passed("job_workflow_ref", caller, job)
    allowed: list[str] = list(spec.get("allowed_reusable_workflows") or [])
    if any(_reusable_allowed(entry, job) for entry in allowed):
        return passed("job_workflow_ref", "an allowed reusable workflow", job)
    listing = ", ".join(allowed) if allowed else "none"
    return failed(
        "job_workflow_ref",
        caller,
        job,
        f"job_workflow_ref {quote(job)} is a reusable workflow this publisher does not allow "
        f"(allowed: {listing})",
    )


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
    # GitHub environment names are case-insensitive; fold ASCII only (see ascii_lower).
    if ascii_lower(claim) != ascii_lower(required):
        return failed(
            "environment",
            required,
            claim,
            f"environment {quote(claim)} does not match the registered environment {quote(required)}",
        )
    return passed("environment", required, claim)


def _check_event_name(spec: Spec, claims: Claims) -> RuleResult:
    event = claim_str(claims, "event_name")
    allowed = list(spec.get("allowed_events") or [])
    reason = GUARDED_EVENTS.get(event)
    if reason is None:
        return passed("event_name", "any event", event)
    if event in allowed:
        return passed("event_name", f"{event} (allowed)", event)
    return failed(
        "event_name",
        "an event other than " + " or ".join(GUARDED_EVENTS),
        event,
        f"event_name {quote(event)} is refused: {reason}; to accept it, allow the event on the publisher "
        f"(trustpub publisher add ... --allow-event {event})",
    )


def _check_ref_or_sha(spec: Spec, claims: Claims) -> RuleResult:  # noqa: ARG001  (table signature)
    ref = claim_str(claims, "ref")
    sha = claim_str(claims, "sha")
    if not ref and not sha:
        return failed("ref", "a non-empty ref or sha", "", "the ref and sha claims are both empty")
    return passed("ref", "a non-empty ref or sha", ref or sha)


RULES: dict[str, Check] = {
    "repository": _check_repository,
    "repository_owner": _check_owner,
    "repository_owner_id": rules.pinned_id(
        "repository_owner_id",
        "owner_id",
        "owner id",
        " (the owner account may have been deleted and its name taken by someone else)",
        _NUMERIC_ID,
    ),
    "repository_id": rules.pinned_id(
        "repository_id",
        "repository_id",
        "repository id",
        " (the repository may have been deleted and its name taken by another one)",
        _NUMERIC_ID,
    ),
    "workflow_ref": _check_workflow_ref,
    "job_workflow_ref": _check_job_workflow_ref,
    "environment": _check_environment,
    "event_name": _check_event_name,
    "ref": _check_ref_or_sha,
    # Beyond PyPI: an optional list of refs (exact, or patterns) the token's ref must match.
    "allowed_refs": rules.allowed_refs_rule("ref"),
}


# --- the provider interface ---------------------------------------------------------------


def lookup_key(claims: Claims) -> str:
    """The key candidates are looked up by: the lower-cased ``owner/name``.

    Raises:
        InvalidPublisher: a required claim is missing or not a string, or ``repository``
            is not an ASCII ``owner/name``.
    """
    for name in REQUIRED_CLAIMS:
        claim_str(claims, name)
    repository = claim_str(claims, "repository")
    if not _REPOSITORY_CLAIM.fullmatch(repository):
        raise InvalidPublisher(f"repository {quote(repository)} is not of the form owner/name")
    return ascii_lower(repository)


def identity(claims: Claims) -> str:
    """``repository <owner/name>``, for "no trusted publisher is registered for ..."."""
    value = claims.get("repository")
    return f"repository {value}" if isinstance(value, str) and value.isascii() else "this repository"


def provenance(claims: Claims) -> dict[str, str]:
    """What a minted token records about its source (strings; "" when absent)."""

    def text(name: str) -> str:
        return rules.claim_text(claims, name)

    workflow_ref = text("workflow_ref")
    _, _, path = workflow_ref.partition("/.github/workflows/")
    return {
        "provider": NAME,
        "issuer": text("iss"),
        "repository": text("repository"),
        "repository_id": text("repository_id"),
        "owner_id": text("repository_owner_id"),
        "workflow": path.split("@", 1)[0],
        "workflow_ref": workflow_ref,
        "job_workflow_ref": text("job_workflow_ref"),
        "ref": text("ref"),
        "sha": text("sha"),
        "run_id": text("run_id"),
        "run_attempt": text("run_attempt"),
        "environment": text("environment"),
        "event_name": text("event_name"),
    }


# --- registration -----------------------------------------------------------------------


def _numeric_id(value: str | None, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not _NUMERIC_ID.fullmatch(value):
        raise RegistrationError(f"{what} must be GitHub's numeric id (digits only), got {quote(value)}")
    return value


def _environment(value: str) -> str:
    if value == "":
        return ""
    non_ascii = rules.first_non_ascii(value)
    if non_ascii is not None:
        # One case rule on both sides, ASCII's (DESIGN.md, "Names are ASCII").
        raise RegistrationError(
            f"environment {quote(value)} must be ASCII: {non_ascii} is not (an environment is "
            "compared with the token's case-insensitively, for ASCII letters only)"
        )
    if len(value) > 255:
        raise RegistrationError("environment must be at most 255 characters")
    if value != value.strip():
        raise RegistrationError(f"environment {quote(value)} must not begin or end with a space")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise RegistrationError(f"environment {quote(value)} must not contain control characters")
    bad = sorted(_ENVIRONMENT_FORBIDDEN.intersection(value))
    if bad:
        raise RegistrationError(
            f"environment {quote(value)} must not contain any of ' \" ` , ; \\ (found {' '.join(bad)})"
        )
    # Stored lower-cased, as PyPI does, by the rule the exchange compares with.
    return ascii_lower(value)


def _reusable_workflows(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        entry = value.strip()
        if not _REUSABLE_INPUT.fullmatch(entry):
            raise RegistrationError(
                f"allowed reusable workflow {quote(value)} must look like "
                "owner/repo/.github/workflows/file.yml, optionally followed by @ref"
            )
        if entry not in out:
            out.append(entry)
    return out


def _events(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        event = value.strip()
        if event not in GUARDED_EVENTS:
            raise RegistrationError(
                f"event {quote(value)} needs no allowing: only {' and '.join(GUARDED_EVENTS)} are "
                "refused by default, every other event is accepted"
            )
        if event not in out:
            out.append(event)
    return out


def validate_spec(  # noqa: PLR0913  (one argument per registered field)
    *,
    owner: str,
    repository: str,
    workflow: str,
    owner_id: str | None = None,
    repository_id: str | None = None,
    environment: str = "",
    allowed_reusable_workflows: Iterable[str] = (),
    allowed_events: Iterable[str] = (),
    allowed_refs: Iterable[str] = (),
    token_lifetime: int | None = None,
    pin_on_first_use: bool = False,
) -> dict[str, Any]:
    """Check registration input (PyPI's form rules) and return the spec to store.

    ``owner_id`` is required unless ``pin_on_first_use`` (see :func:`rules.owner_id_or_pinning`).

    Raises:
        RegistrationError: a field is malformed, or could never match a GitHub token.
    """
    owner = owner.strip()
    if not owner or len(owner) > 39 or not _OWNER_INPUT.fullmatch(owner):
        raise RegistrationError(
            f"owner {quote(owner)} is not a GitHub user or organization name "
            "(1-39 letters, digits and '-', not starting with '-')"
        )
    repository = repository.strip()
    if not repository or len(repository) > 100 or not _REPOSITORY_INPUT.fullmatch(repository):
        raise RegistrationError(
            f"repository {quote(repository)} is not a GitHub repository name "
            "(1-100 letters, digits, '-', '_', '.')"
        )
    if repository in {".", ".."}:
        raise RegistrationError(f"repository {quote(repository)} is not a GitHub repository name")
    workflow = workflow.strip()
    if "/" in workflow or "\\" in workflow:
        raise RegistrationError(
            f"workflow {quote(workflow)} must be a file name in .github/workflows, without a path"
        )
    if not workflow.endswith((".yml", ".yaml")) or workflow in {".yml", ".yaml"}:
        raise RegistrationError(f"workflow {quote(workflow)} must be a file name ending in .yml or .yaml")
    if "@" in workflow or any(c.isspace() or ord(c) < 0x20 for c in workflow):
        raise RegistrationError(
            f"workflow {quote(workflow)} must not contain '@', spaces or control characters"
        )
    spec = {
        "owner": owner,
        "owner_id": _numeric_id(owner_id, "owner id"),
        "repository": repository,
        "repository_id": _numeric_id(repository_id, "repository id"),
        "workflow": workflow,
        "environment": _environment(environment),
        "allowed_reusable_workflows": _reusable_workflows(allowed_reusable_workflows),
        "allowed_events": _events(allowed_events),
        **rules.constraints(allowed_refs, token_lifetime),
    }
    rules.owner_id_or_pinning(
        owner_id,
        pin_on_first_use=pin_on_first_use,
        flag="--owner-id",
        where="the id field of GitHub's GET /users/OWNER",
    )
    return spec


def spec_lookup_key(spec: Spec) -> str:
    """The lookup key of a registered spec; equals :func:`lookup_key` of matching claims."""
    return ascii_lower(_registered_repository(spec))


def unique_parts(spec: Spec) -> list[object]:
    """What makes two GitHub publishers of one issuer the same one.

    The repository (case-insensitive), the workflow file (exact, since the rule compares it
    exactly) and the environment (case-insensitive). The owner id is not part of it, as in
    Warehouse: a resurrected owner name cannot register a duplicate with a new id next to the
    pinned one.
    """
    return [spec_lookup_key(spec), str(spec["workflow"]), ascii_lower(str(spec["environment"]))]


# ``trustpub publisher add github``'s options and the admin API's fields, after the common ones.
OPTIONS: tuple[Option, ...] = (
    ALLOWED_REFS,
    Option("owner", STR, "repository owner (user or organization)", required=True),
    *owner_id_options("owner_id", "owner's numeric id"),
    Option("repository", STR, "repository name, without the owner", required=True),
    Option("repository_id", OPT_STR, "repository's numeric id (default: pinned on first use)"),
    Option("workflow", STR, "workflow file name, e.g. release.yml", required=True),
    Option("environment", STR, "GitHub environment required (default: any)"),
    Option(
        "allowed_reusable_workflows",
        STRS,
        "owner/repo/.github/workflows/file.yml[@ref] that may run the job",
        flag="--allow-reusable-workflow",
        metavar="REF",
    ),
    Option(
        "allowed_events",
        STRS,
        "pull_request_target or workflow_run, refused unless allowed",
        flag="--allow-event",
        metavar="EVENT",
    ),
)


# --- description --------------------------------------------------------------------------


def describe(spec: Spec) -> list[str]:
    owner_id = spec.get("owner_id") or "pinned by the first token"
    repo_id = spec.get("repository_id") or "pinned on first use"
    lines = [
        f"  repository   {spec['owner']}/{spec['repository']}",
        f"  ids          owner {owner_id}, repository {repo_id}",
        f"  workflow     {spec['workflow']}",
        f"  environment  {spec.get('environment') or '(any)'}",
    ]
    if spec.get("allowed_reusable_workflows"):
        lines.append(f"  reusable     {', '.join(spec['allowed_reusable_workflows'])}")
    if spec.get("allowed_events"):
        lines.append(f"  events       {', '.join(spec['allowed_events'])} (allowed)")
    return lines


def summary(spec: Spec) -> str:
    return f"{spec['owner']}/{spec['repository']}  {spec['workflow']}  env={spec.get('environment') or '*'}"


PROVIDER = Provider(
    name=NAME,
    title="GitHub",
    cli_help="a GitHub Actions workflow (github.com or GHES)",
    issuer=ISSUER,
    requires_jti=True,
    table=RULES,
    lookup_key=lookup_key,
    identity=identity,
    provenance=provenance,
    narrowing_field="environment",
    pinned_fields=_PINNED_FIELDS,
    addressed_by=("workflow_ref", "job_workflow_ref"),
    owner_field="owner_id",
    owner_name_field="owner",
    options=OPTIONS,
    build_spec=keyword_spec(validate_spec, OPTIONS),
    spec_lookup_key=spec_lookup_key,
    unique_parts=unique_parts,
    list_fields=_OPTION_FIELDS,
    describe=describe,
    summary=summary,
)
