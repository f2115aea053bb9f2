"""A publisher's registration as named fields, whichever way it comes in: ``trustpub publisher
add``'s options, the admin API's request bodies and a publishers file's entries. Each provider
declares its fields once (``Provider.options``); here they are checked field by field, then
validated by the provider (``Provider.build_spec``) and the issuer's check, so every way in
applies the same rules.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustpub.providers import PROVIDERS
from trustpub.providers.base import BOOL, DEFAULTS, INT, OPT_STR, STR, STRS, Option, Provider
from trustpub.providers.issuers import BUILTIN, IssuerRegistry
from trustpub.providers.rules import RegistrationError
from trustpub.registry.publishers import NewPublisher
from trustpub.runtime.config import ConfigError, env_name

_PROVIDER_FIELD = Option("provider", STR, required=True)


def fields(provider: Provider) -> dict[str, Option]:
    """A registration's fields for ``provider``, in order, by name."""
    return {_PROVIDER_FIELD.name: _PROVIDER_FIELD} | {o.name: o for o in provider.all_options}


def field_names(provider: str, providers: Mapping[str, Provider] = PROVIDERS) -> dict[str, Option]:
    """The fields of a registration for the provider called ``provider``; none for an unknown one."""
    found = providers.get(provider)
    return fields(found) if found is not None else {}


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
    return kind == BOOL and isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Registration:
    """A checked registration: the publisher, and its projects (or its pending project)."""

    new: NewPublisher
    projects: list[str]
    pending_project: str | None


def check_fields(body: Any, providers: Mapping[str, Provider] = PROVIDERS) -> dict[str, Any]:  # noqa: ANN401  (any JSON value)
    """The body's fields with their defaults, if every one is known and of its type.

    Raises:
        FieldErrors: each field that is unknown, missing or of another type.
    """
    if not isinstance(body, dict):
        raise FieldErrors({"body": "must be a JSON object"})
    provider = body.get("provider")
    if not isinstance(provider, str) or provider not in providers:
        raise FieldErrors({"provider": f"must be one of {', '.join(sorted(providers))}"})
    known = fields(providers[provider])
    errors: dict[str, str] = {}
    for name in body:
        if name not in known:
            errors[str(name)] = f"is not a field of a {provider} publisher"
    for name, f in known.items():
        if name not in body:
            if f.required:
                errors[name] = "is required"
        elif not _type_ok(f.kind, body[name]):
            errors[name] = f"must be a {f.kind}" if f.kind != STRS else f"must be an {f.kind}"
    if errors:
        raise FieldErrors(errors)
    values = {name: body.get(name, DEFAULTS[f.kind]) for name, f in known.items()}
    return {k: list(v) if isinstance(v, list) else v for k, v in values.items()}


def check_issuer(issuer: str, provider: str) -> str:
    """The issuer a publisher names, refused when it could never give this provider's tokens.

    Known issuers are the built-in ones and, when ``TRUSTPUB_ISSUERS_FILE`` is set, the
    operator's file: a publisher for a known issuer of another provider could never match.
    An issuer the file does not list is refused too when the file is given.

    Raises:
        RegistrationError: the issuer is not an https URL, or could never give such tokens.
    """
    issuer = issuer.strip()
    if not issuer.startswith("https://"):
        raise RegistrationError(f"issuer {issuer!r} must be an https:// URL")
    path = os.environ.get(env_name("issuers_file"))
    try:
        known = IssuerRegistry.load(Path(path)) if path else IssuerRegistry(BUILTIN)
    except ConfigError as exc:
        raise RegistrationError(f"cannot check the issuer: {exc}") from exc
    found = known.get(issuer)
    if found is not None and found.provider != provider:
        raise RegistrationError(
            f"issuer {issuer!r} gives {found.provider} tokens, not {provider} ones; "
            f"a {provider} publisher for it could never match"
        )
    if found is None and path:
        raise RegistrationError(
            f"issuer {issuer!r} is not configured in {path}; add it there (provider = {provider!r}) first"
        )
    return issuer


def new_publisher(provider: Provider, values: Mapping[str, Any], *, registrant: str) -> NewPublisher:
    """Validate a registration's values (by field name) and build the publisher to store.

    Raises:
        RegistrationError: the provider's validation or the issuer's check refused it.
    """
    spec = provider.build_spec(values)
    issuer = check_issuer(values["issuer"] or provider.issuer, provider.name)
    return NewPublisher.of(provider, issuer, spec, registrant)


def registration(
    body: Any,  # noqa: ANN401  (any JSON value)
    *,
    registrant: str,
    providers: Mapping[str, Provider] = PROVIDERS,
) -> Registration:
    """Check a registration as the CLI does (``trustpub publisher add``).

    Raises:
        FieldErrors: a field is unknown, missing or of another type.
        RegistrationError: the provider's validation refused it (the message says why).
    """
    values = check_fields(body, providers)
    provider = providers[values["provider"]]
    projects, pending = values["projects"], values["pending_project"]
    if pending is not None and projects:
        raise FieldErrors({"pending_project": "give either projects (existing ones) or pending_project"})
    if pending is None and not projects:
        raise FieldErrors({"projects": "name at least one project, or pending_project for a new one"})
    try:
        new = new_publisher(provider, values, registrant=values["registrant"] or registrant)
    except RegistrationError:
        raise
    except (ValueError, TypeError) as exc:  # a provider's check of a value of an odd form
        raise RegistrationError(str(exc)) from exc
    return Registration(new=new, projects=list(projects), pending_project=pending)
