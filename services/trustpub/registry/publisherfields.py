"""A publisher's registration as named fields: the admin API's request bodies (and a
publishers file's entries) checked field by field, then validated by the CLI's own code
(``cli._new_publisher``: the providers' rules, the issuer's check), so every way in applies
the same rules.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trustpub.providers import activestate, github, gitlab, google
from trustpub.providers.issuers import ACTIVESTATE, GITHUB, GITLAB, GOOGLE
from trustpub.providers.rules import RegistrationError
from trustpub.registry import db

STR = "string"
OPT_STR = "string or null"
STRS = "array of strings"
INT = "integer or null"
BOOL = "boolean"


@dataclass(frozen=True, slots=True)
class Field:
    kind: str
    required: bool = False
    dest: str = ""  # the CLI's argument name, when it differs


_COMMON: dict[str, Field] = {
    "provider": Field(STR, required=True),
    "projects": Field(STRS),
    "pending_project": Field(OPT_STR),
    "issuer": Field(STR),
    "registrant": Field(OPT_STR),
    "token_lifetime": Field(INT),
}
_REFS = {"allowed_refs": Field(STRS, dest="refs")}
FIELDS: dict[str, dict[str, Field]] = {
    github.NAME: _COMMON
    | _REFS
    | {
        "owner": Field(STR, required=True),
        "owner_id": Field(OPT_STR),
        "pin_on_first_use": Field(BOOL),
        "repository": Field(STR, required=True),
        "repository_id": Field(OPT_STR),
        "workflow": Field(STR, required=True),
        "environment": Field(STR),
        "allowed_reusable_workflows": Field(STRS, dest="reusable"),
        "allowed_events": Field(STRS, dest="events"),
    },
    gitlab.NAME: _COMMON
    | _REFS
    | {
        "project_path": Field(STR, required=True),
        "namespace_id": Field(OPT_STR),
        "pin_on_first_use": Field(BOOL),
        "project_id": Field(OPT_STR),
        "ci_config_path": Field(STR, required=True),
        "environment": Field(STR),
    },
    google.NAME: _COMMON | {"email": Field(STR, required=True), "sub": Field(STR)},
    activestate.NAME: _COMMON
    | {
        "organization": Field(STR, required=True),
        "activestate_project": Field(STR, required=True),
        "actor_id": Field(STR, required=True),
        "actor": Field(STR),
    },
}
_ISSUERS = {github.NAME: GITHUB, gitlab.NAME: GITLAB, google.NAME: GOOGLE, activestate.NAME: ACTIVESTATE}
_DEFAULTS: dict[str, Any] = {STR: "", OPT_STR: None, STRS: [], INT: None, BOOL: False}


class FieldErrors(Exception):
    """Input that is not a registration: ``errors`` maps each field to what is wrong with it."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _type_ok(kind: str, value: Any) -> bool:  # noqa: ANN401  (any JSON value)
    if kind == STR:
        return isinstance(value, str)
    if kind == OPT_STR:
        return value is None or isinstance(value, str)
    if kind == STRS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == INT:
        return value is None or (isinstance(value, int) and not isinstance(value, bool))
    return isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Registration:
    """A checked registration: the publisher, and its projects (or its pending project)."""

    new: db.NewPublisher
    projects: list[str]
    pending_project: str | None


def check_fields(body: Any) -> dict[str, Any]:  # noqa: ANN401  (any JSON value)
    """The body's fields with their defaults, if every one is known and of its type.

    Raises:
        FieldErrors: each field that is unknown, missing or of another type.
    """
    if not isinstance(body, dict):
        raise FieldErrors({"body": "must be a JSON object"})
    provider = body.get("provider")
    if provider not in FIELDS:
        raise FieldErrors({"provider": f"must be one of {', '.join(sorted(FIELDS))}"})
    fields = FIELDS[provider]
    errors: dict[str, str] = {}
    for name in body:
        if name not in fields:
            errors[str(name)] = f"is not a field of a {provider} publisher"
    for name, f in fields.items():
        if name not in body:
            if f.required:
                errors[name] = "is required"
        elif not _type_ok(f.kind, body[name]):
            errors[name] = f"must be a {f.kind}" if f.kind != STRS else f"must be an {f.kind}"
    if errors:
        raise FieldErrors(errors)
    values = {name: body.get(name, _DEFAULTS[f.kind]) for name, f in fields.items()}
    return {k: list(v) if isinstance(v, list) else v for k, v in values.items()}


def registration(body: Any, *, registrant: str) -> Registration:  # noqa: ANN401  (any JSON value)
    """Check a registration as the CLI does (``trustpub publisher add``).

    Raises:
        FieldErrors: a field is unknown, missing or of another type.
        RegistrationError: the CLI's validation refused it (the message says why).
    """
    values = check_fields(body)
    provider = values["provider"]
    from trustpub.registry import cli  # noqa: PLC0415  (the CLI imports the registry's modules)

    args = argparse.Namespace(provider=provider)
    for name, f in FIELDS[provider].items():
        setattr(args, f.dest or name, values[name])
    if not args.issuer:
        args.issuer = _ISSUERS[provider]
    args.registrant = values["registrant"] or registrant
    projects, pending = values["projects"], values["pending_project"]
    if pending is not None and projects:
        raise FieldErrors({"pending_project": "give either projects (existing ones) or pending_project"})
    if pending is None and not projects:
        raise FieldErrors({"projects": "name at least one project, or pending_project for a new one"})
    try:
        new = cli._new_publisher(args)  # noqa: SLF001  (the CLI's validation, shared)
    except RegistrationError:
        raise
    except (ValueError, TypeError) as exc:  # a provider's check of a value of an odd form
        raise RegistrationError(str(exc)) from None
    return Registration(new=new, projects=list(projects), pending_project=pending)


def fields_of(provider: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The registration fields that reproduce a stored spec (the inverse of ``registration``
    for the provider's fields)."""
    names = FIELDS[provider]
    return {k: v for k, v in spec.items() if k in names}
