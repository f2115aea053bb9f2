"""Table-driven claim rules: the machinery every provider shares.

A provider declares its checks as a table ``{rule name: check}``, as Warehouse does with
``__required_verifiable_claims__``; :func:`evaluate` runs every check of the table in one
loop and returns one :class:`RuleResult` per rule, so a caller sees every reason a token
was refused, not only the first. An empty table fails closed.

Claim values are never coerced: a claim of the wrong JSON type fails its rule.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from trustpub.messages import InvalidPublisher
from trustpub.messages.text import json_type

Claims = Mapping[str, Any]
Spec = Mapping[str, Any]

T = TypeVar("T")

# Descriptions quote claim values; a huge claim must not turn into a huge error message.
QUOTE_LIMIT = 160


@dataclass(frozen=True, slots=True)
class RuleResult:
    """The outcome of one rule: what was expected, what the token carried, and why."""

    rule: str
    ok: bool
    expected: str
    actual: str
    description: str


Check = Callable[[Spec, Claims], RuleResult]
RuleTable = Mapping[str, Check]


class RegistrationError(ValueError):
    """Publisher registration input that is malformed or could never match a token."""


def claim_text(claims: Claims, name: str) -> str:
    """A claim's value if it is a string, else "" (for provenance, never for checks)."""
    value = claims.get(name)
    return value if isinstance(value, str) else ""


# ASCII-only case folding. str.lower() folds some non-ASCII letters onto ASCII ones
# ("\u212a".lower() == "k", the Kelvin sign), which would let a look-alike match.
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def ascii_lower(value: str) -> str:
    """Lower-case ASCII letters only; every other character is left as it is."""
    return value.translate(_ASCII_LOWER)


def describe_char(c: str) -> str:
    """One character for a message, escaped: ``U+017F (LATIN SMALL LETTER LONG S)``."""
    name = unicodedata.name(c, "")
    return f"U+{ord(c):04X} ({name})" if name else f"U+{ord(c):04X}"


def first_non_ascii(value: str) -> str | None:
    """The first character of ``value`` outside ASCII, described with its position, or None."""
    for position, c in enumerate(value, 1):
        if not c.isascii():
            return f"{describe_char(c)} at position {position}"
    return None


def quote(value: object) -> str:
    """A claim value for a description: JSON-quoted, non-ASCII escaped, bounded in length.

    Escaping makes a look-alike visible (``"octo-\\u043erg/demo"``) and keeps control
    characters out of messages and logs.
    """
    text = json.dumps(value, ensure_ascii=True)
    if len(text) > QUOTE_LIMIT:
        text = text[: QUOTE_LIMIT - 4] + '..."'
    return text


def claim_str(claims: Claims, name: str) -> str:
    """The string value of a required claim.

    Raises:
        InvalidPublisher: the claim is absent or null, or not a JSON string.
    """
    value = claims.get(name)
    if value is None:
        raise InvalidPublisher(f"missing claim {name!r}")
    if not isinstance(value, str):
        raise InvalidPublisher(f"claim {name!r} must be a string, got {json_type(value)}")
    return value


def optional_str(claims: Claims, name: str) -> str | None:
    """The string value of an optional claim, ``None`` when absent or null.

    Raises:
        InvalidPublisher: the claim is present but not a JSON string.
    """
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidPublisher(f"claim {name!r} must be a string, got {json_type(value)}")
    return value


def passed(rule: str, expected: str, actual: str, description: str = "") -> RuleResult:
    return RuleResult(rule=rule, ok=True, expected=expected, actual=actual, description=description or "ok")


def failed(rule: str, expected: str, actual: str, description: str) -> RuleResult:
    return RuleResult(rule=rule, ok=False, expected=expected, actual=actual, description=description)


def evaluate(table: RuleTable, spec: Spec, claims: Claims) -> list[RuleResult]:
    """Run every rule of ``table``; a rule whose claim is missing or mistyped fails.

    An empty table yields one failed result: no rule means no match, never "anything goes".
    """
    if not table:
        return [
            failed(
                "rules", "at least one claim rule", "none", "no claim rules are defined for this publisher"
            )
        ]
    results: list[RuleResult] = []
    for name, check in table.items():
        try:
            result = check(spec, claims)
        except InvalidPublisher as exc:
            result = failed(name, "a well-formed claim", "", exc.description)
        results.append(result)
    return results


def all_passed(results: Sequence[RuleResult]) -> bool:
    """True when there is at least one result and every result passed."""
    return bool(results) and all(r.ok for r in results)


def failure_descriptions(results: Iterable[RuleResult]) -> list[str]:
    """The descriptions of the failed results, each once, in order."""
    seen: dict[str, None] = {}
    for r in results:
        if not r.ok:
            seen.setdefault(r.description, None)
    return list(seen)


def most_specific(candidates: Sequence[tuple[int, T]]) -> T:
    """The candidate of highest specificity among those that passed every rule.

    Raises:
        InvalidPublisher: no candidate, or two equally specific ones (unique keys should
            make that impossible; if it happens anyway, refuse rather than guess).
    """
    if not candidates:
        raise InvalidPublisher("no publisher passed every rule")
    best = max(score for score, _ in candidates)
    top = [c for score, c in candidates if score == best]
    if len(top) > 1:
        raise InvalidPublisher(f"{len(top)} publishers match this token equally well; refusing to guess")
    return top[0]


# --- per-publisher constraints beyond PyPI, shared by every provider ----------------------
#
# Stored in the publisher's spec only when set (``allowed_refs``, ``token_lifetime``), so a
# spec registered without them keeps its shape.

# Bounds on a publisher's own minted-token lifetime, seconds: below five
# minutes a slow upload of large distributions outlives its token; above an hour a leaked
# token stays useful for too long (PyPI: fixed 15 minutes).
TOKEN_LIFETIME_MIN = 300
TOKEN_LIFETIME_MAX = 3600
# A publisher lists a handful of refs; a long list is a mistake, and every entry is
# matched on every exchange.
MAX_ALLOWED_REFS = 32
MAX_REF_PATTERN = 255
# Characters git refuses in ref names (git check-ref-format), so a pattern using them could
# never match a real ref; "*" and "?" are the only wildcards and are absent from real refs.
_REF_FORBIDDEN = frozenset(" ~^:\\[")


def _segment_matches(pattern: str, text: str) -> bool:
    """Wildcard match of one ref segment: ``*`` any run of characters, ``?`` one character.

    The iterative two-pointer algorithm: linear backtracking only to the last ``*``, so a
    pattern like ``a*a*a*b`` costs O(len(pattern) * len(text)), never exponential time.
    """
    p = t = 0
    star = -1
    resume = 0
    while t < len(text):
        if p < len(pattern) and pattern[p] in ("?", text[t]):
            p += 1
            t += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, resume = p, t
            p += 1
        elif star >= 0:
            p = star + 1
            resume += 1
            t = resume
        else:
            return False
    return all(c == "*" for c in pattern[p:])


def ref_matches(pattern: str, ref: str) -> bool:
    """Whether ``ref`` is ``pattern``: exact, or with ``*``/``?`` wildcards within segments.

    A wildcard never crosses ``/``: ``refs/heads/*`` admits ``refs/heads/main`` but not
    ``refs/heads/feature/x``. No regular expression is built from the pattern.
    """
    if "*" not in pattern and "?" not in pattern:
        return pattern == ref
    want, got = pattern.split("/"), ref.split("/")
    return len(want) == len(got) and all(_segment_matches(w, g) for w, g in zip(want, got, strict=True))


def validate_allowed_refs(values: Iterable[str]) -> list[str]:
    """Registration check of allowed refs: full ref names, wildcards only after the kind.

    Raises:
        RegistrationError: an entry is not a full ref name, or could never match one, or
            is so broad that it constrains nothing.
    """
    out: list[str] = []
    for value in values:
        entry = value.strip()
        if not entry.startswith("refs/") or len(entry) > MAX_REF_PATTERN:
            raise RegistrationError(
                f"allowed ref {quote(value)} must be a full ref name such as refs/tags/v1.0.0 or a "
                f"pattern such as refs/tags/v* (at most {MAX_REF_PATTERN} characters)"
            )
        if any(not 0x21 <= ord(c) <= 0x7E or c in _REF_FORBIDDEN for c in entry):
            raise RegistrationError(
                f"allowed ref {quote(value)} contains a character git never allows in a ref name "
                "(space, control, ~ ^ : \\ [ or non-ASCII)"
            )
        segments = entry.split("/")
        if "" in segments or ".." in entry or entry.endswith((".", ".lock")) or "@{" in entry:
            raise RegistrationError(f"allowed ref {quote(value)} is not a valid git ref name")
        if len(segments) < 3 or any(c in segments[1] for c in "*?"):
            # "refs/*/x" or "refs/*" would admit branches and tags alike.
            raise RegistrationError(
                f"allowed ref {quote(value)} must name the kind of ref without wildcards "
                "(refs/heads/..., refs/tags/...) and something after it"
            )
        if entry not in out:
            out.append(entry)
    if len(out) > MAX_ALLOWED_REFS:
        raise RegistrationError(f"at most {MAX_ALLOWED_REFS} allowed refs, got {len(out)}")
    return out


def validate_token_lifetime(value: int | None) -> int | None:
    """``None`` (the service's default) or seconds within the bounds.

    Raises:
        RegistrationError: out of bounds.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not TOKEN_LIFETIME_MIN <= value <= TOKEN_LIFETIME_MAX:
        raise RegistrationError(
            f"token lifetime must be {TOKEN_LIFETIME_MIN} to {TOKEN_LIFETIME_MAX} seconds "
            f"(5 to 60 minutes), got {value}"
        )
    return value


def constraints(allowed_refs: Iterable[str] = (), token_lifetime: int | None = None) -> dict[str, Any]:
    """The constraint fields to add to a spec: only those that are set.

    Raises:
        RegistrationError: see :func:`validate_allowed_refs`, :func:`validate_token_lifetime`.
    """
    out: dict[str, Any] = {}
    refs = validate_allowed_refs(allowed_refs)
    if refs:
        out["allowed_refs"] = refs
    lifetime = validate_token_lifetime(token_lifetime)
    if lifetime is not None:
        out["token_lifetime"] = lifetime
    return out


def allowed_refs_rule(claim: str) -> Check:
    """The rule ``allowed_refs`` on the token's ``claim`` (GitHub ``ref``, GitLab ``ref_path``)."""

    def check(spec: Spec, claims: Claims) -> RuleResult:
        allowed: list[str] = list(spec.get("allowed_refs") or [])
        ref = claim_str(claims, claim)
        if not allowed:
            return passed("allowed_refs", "any ref", ref)
        listing = ", ".join(quote(a) for a in allowed)
        if not ref:
            return failed(
                "allowed_refs",
                listing,
                "",
                f"the token carries no {claim}; the publisher allows only {listing}",
            )
        if any(ref_matches(pattern, ref) for pattern in allowed):
            return passed("allowed_refs", listing, ref)
        return failed(
            "allowed_refs", listing, ref, f"{claim} {quote(ref)} is not among the allowed refs ({listing})"
        )

    return check


def merge_constraints(existing: Spec, requested: Spec) -> None:
    """Refuse re-registering an identical publisher with other constraints.

    Raises:
        RegistrationError: allowed refs or token lifetime differ.
    """
    if sorted(requested.get("allowed_refs") or []) != sorted(existing.get("allowed_refs") or []):
        raise RegistrationError(
            "this publisher exists already with allowed refs "
            f"{json.dumps(existing.get('allowed_refs') or [])}; register it with the same options, "
            "or remove it first"
        )
    if requested.get("token_lifetime") != existing.get("token_lifetime"):
        have = existing.get("token_lifetime")
        raise RegistrationError(
            f"this publisher exists already with token lifetime {have or 'the default'}; register it "
            "with the same options, or remove it first"
        )


def owner_id_or_pinning(value: str | None, *, pin_on_first_use: bool, flag: str, where: str) -> None:
    """Registration's rule on the owner's id (DESIGN.md, "Owners are confirmed"): given, or
    explicitly left for the first token to pin, never both and never silently.

    Raises:
        RegistrationError: neither, or both.
    """
    given = value not in {None, ""}
    if given and pin_on_first_use:
        raise RegistrationError(f"give either {flag} or --pin-on-first-use, not both")
    if not given and not pin_on_first_use:
        raise RegistrationError(
            f"{flag} is required: the owner's immutable id ({where}); without it whoever first "
            "presents a token for this name would own the publisher. To let the first token pin it "
            "instead, add --pin-on-first-use: the publisher then mints only after an operator "
            "confirms the pinned id (trustpub publisher confirm)"
        )


def pinned_id(rule: str, field: str, what: str, hint: str, pattern: re.Pattern[str]) -> Check:
    """A rule on an immutable id claim: pinned in ``spec[field]``, or ``None`` = pin on first use."""

    def check(spec: Spec, claims: Claims) -> RuleResult:
        claim = claim_str(claims, rule)
        pinned = spec.get(field)
        if pinned is None:
            # Not given at registration: any well-formed id passes and the registry pins it.
            if not pattern.fullmatch(claim):
                return failed(rule, "a numeric id", claim, f"{rule} {quote(claim)} is not a numeric id")
            return passed(rule, "any (pinned on first use)", claim)
        # Exact string equality: "1001 " or 1001 (a number) is not "1001".
        if claim != pinned:
            return failed(
                rule,
                str(pinned),
                claim,
                f"{rule} {quote(claim)} does not match the registered {what} {quote(pinned)}{hint}",
            )
        return passed(rule, str(pinned), claim)

    return check
