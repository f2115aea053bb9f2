"""Table-driven claim rules: the machinery every provider shares.

A provider declares its checks as a table ``{rule name: check}``, as Warehouse does with
``__required_verifiable_claims__``; :func:`evaluate` runs every check of the table in one
loop and returns one :class:`RuleResult` per rule, so a caller sees every reason a token
was refused, not only the first. An empty table fails closed.

Claim values are never coerced: a claim of the wrong JSON type fails its rule.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from trustpub.messages import InvalidPublisher

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


@dataclass(frozen=True, slots=True)
class ProviderRules:
    """What the registry needs from a provider to match verified claims to publishers.

    ``lookup_key``, ``evaluate`` and the others are plain functions of claims and the
    publisher's registered ``spec`` (a JSON object); none of them does I/O.
    """

    name: str
    # Raises InvalidPublisher when a claim needed to find candidates is missing or malformed.
    lookup_key: Callable[[Claims], str]
    # A phrase naming the token's own identity, e.g. "repository octo-org/demo".
    identity: Callable[[Claims], str]
    evaluate: Callable[[Spec, Claims], list[RuleResult]]
    specificity: Callable[[Spec], int]
    provenance: Callable[[Claims], dict[str, str]]
    # Fields of ``spec`` left open at registration, to be pinned to these claim values.
    pins: Callable[[Spec, Claims], dict[str, str]]


# ASCII-only case folding. str.lower() folds some non-ASCII letters onto ASCII ones
# ("\u212a".lower() == "k", the Kelvin sign), which would let a look-alike match.
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def ascii_lower(value: str) -> str:
    """Lower-case ASCII letters only; every other character is left as it is."""
    return value.translate(_ASCII_LOWER)


def quote(value: object) -> str:
    """A claim value for a description: JSON-quoted, non-ASCII escaped, bounded in length.

    Escaping makes a look-alike visible (``"octo-\\u043erg/demo"``) and keeps control
    characters out of messages and logs.
    """
    text = json.dumps(value, ensure_ascii=True)
    if len(text) > QUOTE_LIMIT:
        text = text[: QUOTE_LIMIT - 4] + '..."'
    return text


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for "must be a string, got number"."""
    # bool before int: True is an int in Python, a boolean in JSON.
    for types, name in (
        (type(None), "null"),
        (bool, "boolean"),
        (int | float, "number"),
        (str, "string"),
        (list | tuple, "array"),
        (Mapping, "object"),
    ):
        if isinstance(value, types):
            return name
    return type(value).__name__


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
