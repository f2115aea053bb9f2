"""Strict parsing of the request body: ``{"token": "<string>"}``.

Stricter than PyPI's pydantic model on the JSON itself (duplicate keys, NaN and a BOM are
refused: two parsers reading one body differently is how smuggling starts, RFC 8725 2.6),
as strict on the type (a non-string token is refused, never coerced), and as lenient on
extra keys (ignored, as PyPI does, so clients that send more keep working).
"""

from __future__ import annotations

from trustpub.messages import InvalidPayload, strictjson
from trustpub.messages.text import json_type


def token_from_body(body: bytes) -> str:
    """The ``token`` string of a request body.

    Raises:
        InvalidPayload: the body is not a JSON object with a string ``token``.
    """
    try:
        doc = strictjson.loads(body)
    except strictjson.StrictJSONError as exc:
        raise InvalidPayload(f"request body {exc}") from exc
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
