"""The shared helpers for untrusted values in messages (trustpub.messages.text): one wording
for every service."""

from __future__ import annotations

import pytest

from trustpub.messages.text import Base64urlError, b64, json_type, reason_phrase, shown, unb64


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff\xfe", b"any bytes at all", bytes(range(256))])
def test_b64_round_trips_without_padding(data: bytes) -> None:
    encoded = b64(data)
    assert b"=" not in encoded
    assert unb64(encoded.decode()) == data


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("AAAA=", "is not valid base64url"),
        ("AA==", "is not valid base64url"),
        ("a+b/", "is not valid base64url"),
        ("A", "is not valid base64url"),
        ("AB", "is not canonical base64url (non-zero unused bits)"),
        ("AAAAB", "is not valid base64url"),
        ("\u00e9\u00e9", "is not valid base64url"),
    ],
)
def test_unb64_refuses_all_but_canonical_base64url(text: str, why: str) -> None:
    with pytest.raises(Base64urlError) as caught:
        unb64(text)
    assert str(caught.value) == why


def test_a_secret_may_be_padded_or_plain_base64() -> None:
    secret = bytes(range(200, 232))
    for text in (
        "yMnKy8zNzs_Q0dLT1NXW19jZ2tvc3d7f4OHi4-Tl5uc=",
        "yMnKy8zNzs/Q0dLT1NXW19jZ2tvc3d7f4OHi4+Tl5uc",
    ):
        assert unb64(text, canonical=False) == secret
    with pytest.raises(Base64urlError, match="is not valid base64url"):
        unb64("k1 !!!!", canonical=False)


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, "null"),
        (True, "a boolean"),
        (7, "an integer"),
        (7.5, "a number with a fraction"),
        ("s", "a string"),
        ([1], "an array"),
        ({}, "an object"),
        (b"", "bytes"),
    ],
)
def test_json_type_names(value: object, name: str) -> None:
    assert json_type(value) == name


def test_shown_escapes_and_cuts() -> None:
    assert shown("plain") == "plain"
    assert shown("a\x1b[31mb\nc") == "a\\x1b[31mb\\nc"
    assert shown("x" * 100, 10) == "x" * 10 + "..."
    assert shown(ValueError("why")) == "why"


def test_reason_phrase_is_visible_ascii() -> None:
    assert reason_phrase("bad\r\nname \u00e9") == "bad??name ?"
    assert len(reason_phrase("x" * 1000)) == 300
