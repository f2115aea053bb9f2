"""Untrusted values in messages, and base64url: one home for each, one wording.

Everything trustpub reads from outside (tokens, key sets, request bodies, headers) ends up
named in a refusal or a log line. :func:`shown` makes a value safe to put there,
:func:`json_type` names a decoded value's JSON type, and :func:`b64` / :func:`unb64` are
the one base64url encoding (RFC 7515 §2: no padding) and its strict, canonical decoding.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

# The base64url alphabet without padding (RFC 4648 §5, RFC 7515 §2).
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

# How a decoded JSON value's type reads in a message ("the token carried an integer", "got an
# array"). bool before int: True is an int in Python, a boolean in JSON.
_JSON_TYPES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (type(None), "null"),
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a number with a fraction"),
    (str, "a string"),
    ((list, tuple), "an array"),
    (Mapping, "an object"),
)


class Base64urlError(ValueError):
    """Not canonical base64url; the message is a phrase that follows the value's name
    (``the payload segment is not valid base64url``)."""


def b64(data: bytes) -> bytes:
    """``data`` as base64url without padding (ASCII bytes)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def unb64(text: str, *, canonical: bool = True) -> bytes:
    """The bytes ``text`` encodes, as canonical base64url without padding only: one byte
    string, one text. Otherwise many texts carry one signature or key, and what is compared
    or remembered as seen (a replay key, a key's form) differs for one value.

    ``canonical=False`` is for a secret a person may have encoded by other means: padding,
    ``+/`` and non-zero unused bits are accepted, any other character is still an error.

    Raises:
        Base64urlError: a character outside the alphabet (padding and ``+/`` included), a
            length no byte string has, or non-zero unused low bits.
    """
    if not canonical:
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        except binascii.Error as exc:
            raise Base64urlError("is not valid base64url") from exc
    if len(text) % 4 == 1 or not _BASE64URL.fullmatch(text):
        raise Base64urlError("is not valid base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64(raw) != text.encode("ascii"):
        raise Base64urlError("is not canonical base64url (non-zero unused bits)")
    return raw


def json_type(value: object) -> str:
    """How a decoded JSON value's type reads in a message: "a string", "an array", "null"."""
    for types, name in _JSON_TYPES:
        if isinstance(value, types):
            return name
    return type(value).__name__


def shown(value: object, limit: int = 64) -> str:
    """``value`` (as text) cut to ``limit`` characters, control and other unprintable ones
    escaped, ``...`` when cut: safe to put in a message or a log line."""
    text = value if isinstance(value, str) else str(value)
    cut = text[:limit]
    if not cut.isprintable():
        cut = cut.encode("unicode_escape").decode("ascii")
    return cut + ("..." if len(text) > limit else "")


def reason_phrase(text: str, limit: int = 300) -> str:
    """``text`` fit for an HTTP status line's reason phrase (RFC 9112 §4: visible ASCII and
    spaces): any other character becomes ``?``, cut to ``limit`` characters."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
