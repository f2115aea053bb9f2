"""Google Cloud: the claim rules of a Google service-account publisher, and its registration.

A publisher's ``spec`` (stored as JSON) holds::

    email            the service account's e-mail (exact)
    sub              its subject id, "" = any token for that e-mail (allowed, but flagged)
    token_lifetime   optional: seconds the minted token lives (300..3600)

Rules follow Warehouse (warehouse/oidc/models/google.py): ``email`` exact and
case-sensitive, ``email_verified`` the JSON value ``true`` (a string "true" is not),
``sub`` exact when registered. Google ID tokens carry no ``jti``: the verifier makes the
token single-use by the SHA-256 of its signing input instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

from trustpub.messages.text import json_type
from trustpub.providers import rules
from trustpub.providers.base import STR, Option, Provider, keyword_spec
from trustpub.providers.rules import (
    Check,
    Claims,
    RegistrationError,
    RuleResult,
    Spec,
    claim_str,
    failed,
    optional_str,
    passed,
    quote,
)

NAME = "google"
ISSUER = "https://accounts.google.com"

# An e-mail address as Google issues them for service accounts: ASCII, one "@", a dotted
# domain. Deliberately narrow: a service account's address is never internationalised.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+")
# Google's subject ids are decimal strings ("up to 255 case-sensitive ASCII characters").
_SUB = re.compile(r"[!-~]{1,255}")
# Default service accounts that every principal with some project role can act as; Warehouse's
# docs warn against them.
_DEFAULT_ACCOUNTS = ("-compute@developer.gserviceaccount.com", "@appspot.gserviceaccount.com")


# --- claim rules ------------------------------------------------------------------------


def _check_email(spec: Spec, claims: Claims) -> RuleResult:
    claim = claim_str(claims, "email")
    expected = str(spec["email"])
    if claim != expected:
        return failed(
            "email",
            expected,
            claim,
            f"email {quote(claim)} is not the registered service account {quote(expected)}",
        )
    return passed("email", expected, claim)


def _check_email_verified(spec: Spec, claims: Claims) -> RuleResult:  # noqa: ARG001  (table signature)
    value = claims.get("email_verified")
    # The JSON value true, nothing else: "true" (a string) or 1 are refused, not coerced.
    if value is True:
        return passed("email_verified", "true", "true")
    if "email_verified" not in claims:
        shown = "no email_verified claim"
    elif isinstance(value, str):
        shown = f"the string {quote(value)}"
    else:
        shown = f"{json.dumps(value)} ({json_type(value)})"
    return failed(
        "email_verified",
        "true",
        shown,
        f"email_verified must be the JSON value true, the token carried {shown}",
    )


def _check_sub(spec: Spec, claims: Claims) -> RuleResult:
    required = str(spec.get("sub") or "")
    claim = optional_str(claims, "sub")
    if not required:
        # Allowed, as in Warehouse, but any token for the e-mail passes: flagged at registration.
        return passed("sub", "any (no subject registered)", claim or "")
    if not claim:
        return failed(
            "sub", required, "", f"the token carries no sub; the publisher requires {quote(required)}"
        )
    if claim != required:
        return failed(
            "sub",
            required,
            claim,
            f"sub {quote(claim)} does not match the registered subject {quote(required)}",
        )
    return passed("sub", required, claim)


RULES: dict[str, Check] = {
    "email": _check_email,
    "email_verified": _check_email_verified,
    "sub": _check_sub,
}


# --- the provider interface ---------------------------------------------------------------


def lookup_key(claims: Claims) -> str:
    """The token's ``email``, exactly.

    Raises:
        InvalidPublisher: ``email`` is missing or not a string.
    """
    return claim_str(claims, "email")


def identity(claims: Claims) -> str:
    value = claims.get("email")
    return (
        f"service account {value}" if isinstance(value, str) and _EMAIL.fullmatch(value) else "this account"
    )


def provenance(claims: Claims) -> dict[str, str]:
    def text(name: str) -> str:
        return rules.claim_text(claims, name)

    return {
        "provider": NAME,
        "issuer": text("iss"),
        "repository": "",
        "email": text("email"),
        "sub": text("sub"),
        "azp": text("azp"),
    }


# --- registration -----------------------------------------------------------------------


def validate_spec(*, email: str, sub: str = "", token_lifetime: int | None = None) -> dict[str, Any]:
    """Check registration input and return the spec to store.

    Raises:
        RegistrationError: the e-mail or subject is malformed.
    """
    email = email.strip()
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise RegistrationError(f"email {quote(email)} is not a service account e-mail address")
    sub = sub.strip()
    if sub and not _SUB.fullmatch(sub):
        raise RegistrationError(
            f"sub {quote(sub)} must be 1 to 255 printable ASCII characters without spaces"
        )
    return {"email": email, "sub": sub, **rules.constraints((), token_lifetime)}


def warnings(spec: Spec) -> list[str]:
    """Weak configurations that registration accepts but the operator should know about."""
    out: list[str] = []
    if not spec.get("sub"):
        out.append(
            "no sub registered: any token for this e-mail is accepted; give --sub to bind the publisher "
            "to one identity"
        )
    if str(spec["email"]).endswith(_DEFAULT_ACCOUNTS):
        out.append(
            "this is a default service account, which many principals in the Google Cloud project can "
            "act as; prefer a dedicated service account"
        )
    return out


def spec_lookup_key(spec: Spec) -> str:
    return str(spec["email"])


def unique_parts(spec: Spec) -> list[object]:
    """The e-mail and the subject ("" = any), with the issuer, as in Warehouse."""
    return [spec["email"], spec["sub"]]


# ``trustpub publisher add google``'s options and the admin API's fields, after the common ones.
OPTIONS: tuple[Option, ...] = (
    Option("email", STR, "the service account's e-mail", required=True),
    Option("sub", STR, "the account's subject id (default: any; recommended)"),
)


# --- description --------------------------------------------------------------------------


def describe(spec: Spec) -> list[str]:
    return [f"  email        {spec['email']}", f"  sub          {spec.get('sub') or '(any)'}"]


def summary(spec: Spec) -> str:
    return f"{spec['email']}  sub={spec.get('sub') or '*'}"


PROVIDER = Provider(
    name=NAME,
    title="Google Cloud",
    cli_help="a Google Cloud service account",
    issuer=ISSUER,
    issuer_settings={"jwks_hosts": ("www.googleapis.com",)},
    table=RULES,
    lookup_key=lookup_key,
    identity=identity,
    provenance=provenance,
    narrowing_field="sub",
    addressed_by=("email",),
    options=OPTIONS,
    build_spec=keyword_spec(validate_spec, OPTIONS),
    spec_lookup_key=spec_lookup_key,
    unique_parts=unique_parts,
    warnings=warnings,
    describe=describe,
    summary=summary,
)
