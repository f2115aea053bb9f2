"""Strict JSON, the one parser for everything trustpub reads from outside: request bodies,
JWT headers and payloads, issuers' discovery documents and key sets.

RFC 8259 strictly, because two parsers reading one document differently is how smuggling
starts (RFC 8725 2.6): UTF-8 only (no BOM), no duplicate member names, no NaN/Infinity, no
number too large for a float, integers of at most 4300 digits (CPython's limit), bounded
nesting, and no unpaired UTF-16 surrogate escape (Python accepts one, and the string could
then never be encoded again to be hashed or sent on).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from trustpub.messages.text import shown

MAX_DEPTH = 32
# A JSON escape of a UTF-16 surrogate (\ud800-\udfff): only then can a lone one be present.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class StrictJSONError(ValueError):
    """What is wrong, as a phrase that follows the name of the document: ``is not UTF-8``,
    ``is not JSON (Expecting value)``, ``is not strict JSON: duplicate key "iss"``,
    ``nests deeper than 32 levels``, ``has a number that is too long``, ``has an unpaired
    UTF-16 surrogate escape``."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise StrictJSONError(f'is not strict JSON: duplicate key "{shown(key, 40)}"')
            seen.add(key)
    return obj


def _constant(name: str) -> Any:  # noqa: ANN401  (a json hook's signature; never returns)
    raise StrictJSONError(f"is not strict JSON: {name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 would silently become inf
        raise StrictJSONError("is not strict JSON: a number too large for a float")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)


def _too_deep(value: object, limit: int) -> bool:
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _has_surrogate(value: object) -> bool:
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def loads(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:  # noqa: ANN401  (any JSON value)
    """Decode ``raw`` as strict JSON.

    Raises:
        StrictJSONError: the document is not strict JSON; the message says why.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StrictJSONError("is not UTF-8") from None
    try:
        value = _DECODER.decode(text)
    except StrictJSONError:
        raise
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"is not JSON ({exc.msg})") from None
    except RecursionError:
        raise StrictJSONError(f"nests deeper than {max_depth} levels") from None
    except ValueError:
        # int() refusing more than 4300 digits (CVE-2020-10735 limit).
        raise StrictJSONError("has a number that is too long") from None
    # Each level opens with "[" or "{": with few of them the text cannot nest deeply, so the
    # walk runs only for unusual documents.
    if text.count("{") + text.count("[") > max_depth and _too_deep(value, max_depth):
        raise StrictJSONError(f"nests deeper than {max_depth} levels")
    if _SURROGATE_ESCAPE.search(text) and _has_surrogate(value):
        raise StrictJSONError("has an unpaired UTF-16 surrogate escape")
    return value
