"""A provider as one object: its claim rules, its registration, its description and its CLI
arguments (DESIGN.md, "Providers and publishers").

Each provider module builds one :class:`Provider` from data and a few plain functions;
:mod:`trustpub.providers` lists them. What every provider does alike (running its rule table,
ranking publishers, pinning ids left open, merging a registration into an identical publisher,
turning its options into argparse arguments and admin API fields) is done here.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from trustpub.providers.rules import (
    TOKEN_LIFETIME_MAX,
    TOKEN_LIFETIME_MIN,
    Claims,
    RegistrationError,
    RuleResult,
    RuleTable,
    Spec,
    evaluate,
    merge_constraints,
)

# The JSON types of registration fields (admin API bodies, publishers files).
STR = "string"
OPT_STR = "string or null"
STRS = "array of strings"
INT = "integer or null"
BOOL = "boolean"
DEFAULTS: Mapping[str, Any] = {STR: "", OPT_STR: None, STRS: [], INT: None, BOOL: False}


@dataclass(frozen=True, slots=True)
class Option:
    """One registration field: its name in the admin API and publishers files (and the
    argparse destination), and the ``trustpub publisher add`` option that gives it."""

    name: str
    kind: str
    help: str = ""
    required: bool = False
    flag: str = ""  # the CLI option, when it is not --name-with-dashes
    metavar: str | None = None

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def add_to(self, parser: argparse.ArgumentParser, *, default: str | None = None) -> None:
        """Add the option to a ``publisher add <provider>`` parser."""
        extra: dict[str, Any] = {"dest": self.name, "help": self.help}
        if self.metavar:
            extra["metavar"] = self.metavar
        if self.kind == STRS:
            parser.add_argument(self.option, action="append", default=[], **extra)
        elif self.kind == BOOL:
            parser.add_argument(self.option, action="store_true", **extra)
        elif self.kind == INT:
            parser.add_argument(self.option, type=int, **extra)
        elif self.required:
            parser.add_argument(self.option, required=True, **extra)
        else:
            parser.add_argument(
                self.option, default=DEFAULTS[self.kind] if default is None else default, **extra
            )


# The options of every provider's registration, before its own (the admin API's field order).
COMMON_OPTIONS: tuple[Option, ...] = (
    Option(
        "projects", STRS, "project it may publish (repeat for several)", flag="--project", metavar="PROJECT"
    ),
    Option(
        "pending_project",
        OPT_STR,
        "register a pending publisher: its first exchange creates project NAME",
        metavar="NAME",
    ),
    Option("issuer", STR, "token issuer"),
    Option("registrant", OPT_STR, "who registers it (for the audit; required for a pending publisher)"),
    Option(
        "token_lifetime",
        INT,
        f"lifetime of its tokens, {TOKEN_LIFETIME_MIN}-{TOKEN_LIFETIME_MAX} s (default: the service's)",
        metavar="SECONDS",
    ),
)
ALLOWED_REFS = Option(
    "allowed_refs",
    STRS,
    "only tokens for this ref (refs/tags/v1.0, or a pattern: refs/tags/v*); repeat for several",
    flag="--allow-ref",
    metavar="REF",
)


class IssuerSettings(TypedDict, total=False):
    """A built-in issuer's settings besides the defaults (``trustpub.providers.issuers.Issuer``)."""

    max_lifetime: int
    jwks_hosts: tuple[str, ...]


def owner_id_options(name: str, what: str) -> tuple[Option, Option]:
    """The owner's id, required unless the operator asks for it to be pinned on first use."""
    flag = "--" + name.replace("_", "-")
    return (
        Option(name, OPT_STR, f"{what} (required, unless --pin-on-first-use)"),
        Option(
            "pin_on_first_use",
            BOOL,
            f"register without {flag}: the first token pins it, and the publisher mints nothing "
            "until an operator confirms that id (trustpub publisher confirm)",
        ),
    )


def keyword_spec(
    validate: Callable[..., dict[str, Any]], options: Sequence[Option]
) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """A ``build_spec`` for a provider whose ``validate_spec`` takes each of its options, and
    the token lifetime, as keyword arguments of the same names."""

    def build(values: Mapping[str, Any]) -> dict[str, Any]:
        return validate(**{o.name: values[o.name] for o in options}, token_lifetime=values["token_lifetime"])

    return build


def _no_warnings(spec: Spec) -> list[str]:  # noqa: ARG001  (the warnings' signature)
    return []


def _no_file_fields(spec: Spec) -> dict[str, Any]:  # noqa: ARG001  (the file_fields' signature)
    return {}


@dataclass(frozen=True, slots=True, kw_only=True)
class Provider:
    """Everything trustpub knows about one identity provider.

    Matching (used by the registry on every exchange): ``table``, ``lookup_key``,
    ``identity``, ``provenance`` and the fields below them; none of these does I/O.
    Registration (the CLI, the admin API, publishers files): ``options``, ``build_spec``,
    ``spec_lookup_key``, ``unique_parts``, :meth:`merge_spec`, ``warnings``. Description:
    ``describe`` and ``summary``. Issuers: ``issuer``, ``issuer_settings``, ``requires_jti``.
    """

    name: str
    # How the provider is named in messages ("GitHub") and in ``publisher add --help``.
    title: str
    cli_help: str
    # Its public issuer: a built-in trusted issuer, and the default of ``--issuer``.
    issuer: str
    # Settings of that built-in issuer besides the defaults (trustpub.providers.issuers.Issuer).
    issuer_settings: IssuerSettings = field(default_factory=IssuerSettings)
    # Whether every token must carry a ``jti``: GitHub's and GitLab's documented tokens do.
    requires_jti: bool = False

    table: RuleTable
    # Raises InvalidPublisher when a claim needed to find candidates is missing or malformed.
    lookup_key: Callable[[Claims], str]
    # A phrase naming the token's own identity, e.g. "repository octo-org/demo".
    identity: Callable[[Claims], str]
    provenance: Callable[[Claims], dict[str, str]]
    # The spec field that narrows a publisher when set ("environment", Google's "sub"):
    # such a publisher is more specific than one that leaves it open.
    narrowing_field: str | None = None
    # (spec field, claim) pairs that registration may leave open, pinned on first use.
    pinned_fields: tuple[tuple[str, str], ...] = ()
    # The rules that say which of an identity's publishers a token was meant for (its workflow
    # file, pipeline file, account): explain reports in full only the publishers that pass them
    # (DESIGN.md, "Explain").
    addressed_by: tuple[str, ...] = ()
    # The pinned field that binds who owns the identity (GitHub's owner id, GitLab's namespace
    # id). Registration requires it unless told to pin it on first use; a publisher registered
    # without it mints only after an operator confirms the id its first token pinned (DESIGN.md,
    # "Owners are confirmed").
    owner_field: str | None = None
    # The spec field that names that owner ("owner", "namespace"), for messages.
    owner_name_field: str = "owner"

    # The provider's own registration options, after COMMON_OPTIONS.
    options: tuple[Option, ...] = ()
    # The spec to store from the options' values (by Option.name; COMMON_OPTIONS included).
    # Raises RegistrationError for input that is malformed or could never match a token.
    build_spec: Callable[[Mapping[str, Any]], dict[str, Any]]
    # The lookup key of a registered spec; equals ``lookup_key`` of matching claims.
    spec_lookup_key: Callable[[Spec], str]
    # What makes two publishers of one issuer the same one (see :meth:`unique_key`).
    unique_parts: Callable[[Spec], Sequence[object]]
    # List options that must agree when a registration meets an identical publisher.
    list_fields: tuple[str, ...] = ()
    # Weak configurations that registration accepts but the operator should know about.
    warnings: Callable[[Spec], list[str]] = _no_warnings
    # The identity lines of ``publisher list``/``add``'s summary, and its one-line form.
    describe: Callable[[Spec], list[str]]
    summary: Callable[[Spec], str]
    # Registration fields a publishers file gives that are not spec fields (GitLab's
    # project_path); the inverse of build_spec for those.
    file_fields: Callable[[Spec], dict[str, Any]] = _no_file_fields

    # --- matching ---------------------------------------------------------------------------

    def owner_open(self, spec: Spec) -> bool:
        """Whether the spec leaves the owner's id open: the publisher needs a confirmation."""
        return self.owner_field is not None and spec.get(self.owner_field) is None

    @property
    def owner_claim(self) -> str:
        """The claim that carries the owner's id (``repository_owner_id``, ``namespace_id``)."""
        return dict(self.pinned_fields).get(self.owner_field or "", "")

    def addresses(self, results: Sequence[RuleResult]) -> bool:
        """Whether a token judged ``results`` against a publisher was plausibly meant for it."""
        return all(r.ok for r in results if r.rule in self.addressed_by)

    def evaluate(self, spec: Spec, claims: Claims) -> list[RuleResult]:
        """Every rule of the table against ``claims``; one result per rule."""
        return evaluate(self.table, spec, claims)

    def specificity(self, spec: Spec) -> int:
        return 1 if self.narrowing_field and spec.get(self.narrowing_field) else 0

    def pins(self, spec: Spec, claims: Claims) -> dict[str, str]:
        """Spec fields left open at registration, with the claim values to pin them to."""
        out: dict[str, str] = {}
        for field_name, claim in self.pinned_fields:
            if spec.get(field_name) is None:
                value = claims.get(claim)
                if isinstance(value, str):
                    out[field_name] = value
        return out

    # --- registration -------------------------------------------------------------------------

    @property
    def all_options(self) -> tuple[Option, ...]:
        """Every registration option of this provider, in the admin API's field order."""
        return COMMON_OPTIONS + self.options

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The arguments of ``trustpub publisher add <provider>``."""
        for option in self.all_options:
            if option.name == "issuer":
                parser.add_argument(
                    option.option,
                    dest=option.name,
                    default=self.issuer,
                    help=f"token issuer (default: {self.issuer})",
                )
            else:
                option.add_to(parser)

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """The options' values of a parsed ``publisher add <provider>``, by Option.name."""
        return {option.name: getattr(args, option.name) for option in self.all_options}

    def unique_key(self, issuer: str, spec: Spec) -> str:
        """What makes two publishers the same one: the provider, the issuer and its parts."""
        return json.dumps([self.name, issuer, *self.unique_parts(spec)], separators=(",", ":"))

    def merge_spec(self, existing: Spec, requested: Spec) -> dict[str, Any]:
        """Reconcile a registration with the identical publisher that exists already.

        Returns the pinned fields to fill in (given now, left open before).

        Raises:
            RegistrationError: the request pins a different id, or asks for other options.
        """
        fill: dict[str, Any] = {}
        for field_name, _ in self.pinned_fields:
            want, have = requested.get(field_name), existing.get(field_name)
            if want is None or want == have:
                continue
            if have is None:
                fill[field_name] = want
                continue
            raise RegistrationError(
                f"this publisher exists already with {field_name.replace('_', ' ')} {have}, not {want}; "
                "remove it first to register it again"
            )
        for field_name in self.list_fields:
            if sorted(requested.get(field_name) or []) != sorted(existing.get(field_name) or []):
                raise RegistrationError(
                    f"this publisher exists already with {field_name.replace('_', ' ')} "
                    f"{json.dumps(existing.get(field_name) or [])}; register it with the same options, "
                    "or remove it first"
                )
        merge_constraints(existing, requested)
        return fill

    def registration_fields(self, spec: Spec) -> dict[str, Any]:
        """The registration fields (bar the common ones) that reproduce a stored spec."""
        out = self.file_fields(spec)
        out |= {o.name: spec[o.name] for o in self.all_options if spec.get(o.name) not in (None, "", [])}
        if self.owner_field and not spec.get(self.owner_field):
            out["pin_on_first_use"] = True
        return out

    # --- description --------------------------------------------------------------------------

    def identity_lines(self, spec: Spec) -> list[str]:
        """The publisher's identity, one line per field, for the CLI's summaries."""
        lines = self.describe(spec)
        if spec.get("allowed_refs"):
            lines.append(f"  refs         {', '.join(spec['allowed_refs'])} (only)")
        if spec.get("token_lifetime"):
            lines.append(f"  lifetime     {spec['token_lifetime']} s")
        return lines
