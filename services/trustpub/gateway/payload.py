"""Strict parsing of the request body: ``{"token": "<string>"}``.

Stricter than PyPI's pydantic model on the JSON itself (duplicate keys, NaN and a BOM are
refused: two parsers reading one body differently is how smuggling starts, RFC 8725 2.6),
as strict on the type (a non-string token is refused, never coerced), and as lenient on
extra keys (ignored, as PyPI does, so clients that send more keep working).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from trustpub.messages import InvalidPayload

# A body is {"token": "..."}: one level. Deeper nesting is refused before anything walks it
# (Python's own recursion limit would stop json near 1000 levels, as a RecursionError).
MAX_DEPTH = 32
# A JSON escape of a UTF-16 surrogate (\ud800-\udfff): json accepts a lone one, which then
# cannot be encoded as UTF-8 again (hashing the token or sending it on would fail).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:40]!r}")
        out[key] = value
    return out


def _constant(name: str) -> Any:  # noqa: ANN401  (json's hook signature)
    raise ValueError(f"{name} is not valid JSON")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 would silently become inf
        raise ValueError(f"{text[:20]} is too large for a number")
    return value


def _too_deep(value: object) -> bool:
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > MAX_DEPTH:
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


_TYPE_NAMES = {
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
    type(None): "null",
}


def json_type(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def token_from_body(body: bytes) -> str:
    """The ``token`` string of a request body.

    Raises:
        InvalidPayload: the body is not a JSON object with a string ``token``.
    """
    try:
        text = body.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_object, parse_constant=_constant, parse_float=_float)
    except UnicodeDecodeError:
        raise InvalidPayload("request body is not UTF-8") from None
    except RecursionError:
        raise InvalidPayload("request body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError, and so are our hooks' refusals
        raise InvalidPayload(f"request body is not valid JSON: {str(exc)[:120]}") from None
    # Each level opens with "[" or "{": with few of them the body cannot nest deeply.
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(doc):
        raise InvalidPayload(f"request body is nested too deeply (more than {MAX_DEPTH} levels)")
    if _SURROGATE_ESCAPE.search(text) and _has_surrogate(doc):
        raise InvalidPayload("request body has an unpaired UTF-16 surrogate escape")
    if not isinstance(doc, dict):
        raise InvalidPayload(
            f'request body must be a JSON object with a "token" string, got {json_type(doc)}'
        )
    if "token" not in doc:
        raise InvalidPayload('request body has no "token"')
    token = doc["token"]
    if not isinstance(token, str):
        raise InvalidPayload(f'"token" must be a string, got {json_type(token)}')
    return token
