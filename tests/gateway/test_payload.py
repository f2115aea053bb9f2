"""The request body parser: PyPI's rejected bodies, plus stricter JSON."""

from __future__ import annotations

import pytest

from trustpub.gateway.payload import token_from_body
from trustpub.messages import InvalidPayload


def test_token_string_is_taken_and_extra_keys_ignored():
    assert token_from_body(b'{"token": "a.b.c", "extra": 1}') == "a.b.c"


# The bodies warehouse's tests/unit/oidc/test_views.py enumerate as rejected.
@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "is not JSON"),
        (b"[]", "must be a JSON object"),
        (b'"a.b.c"', "got a string"),
        (b"12345", "got an integer"),
        (b"3.14", "got a number with a fraction"),
        (b"null", "got null"),
        (b"{}", 'has no "token"'),
        (b'{"token": null}', '"token" must be a string, got null'),
        (b'{"wrongkey": ""}', 'has no "token"'),
        (b'{"token": 3.14}', "got a number with a fraction"),
        (b'{"token": 0}', "got an integer"),
        (b'{"token": [""]}', "got an array"),
        (b'{"token": []}', "got an array"),
        (b'{"token": {}}', "got an object"),
        (b'{"token": true}', "got a boolean"),
    ],
)
def test_pypi_rejected_bodies(body, why):
    with pytest.raises(InvalidPayload, match=why):
        token_from_body(body)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"token": "x.y.z", "token": "a.b.c"}', "duplicate key"),
        (b'{"token": NaN}', "NaN is not JSON"),
        (b'{"token": "a", "n": Infinity}', "Infinity is not JSON"),
        (b'{"token": "a", "n": ' + b"9" * 5000 + b"}", "number that is too long"),
        (b'{"token": "a", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}", "nests deeper than 32 levels"),
        (b"\xef\xbb\xbf" + b'{"token": "a"}', "is not JSON"),
        ('{"token": "a"}'.encode("utf-16"), "not UTF-8"),
        (b'{"token": "\xff"}', "not UTF-8"),
        # Found by the corpus (tests/corpus, A10b, A11b, A11d):
        (b'{"token": "a", "n": 1e999}', "a number too large for a float"),
        (b'{"token": "a", "x": ' + b"[" * 33 + b"]" * 33 + b"}", "nests deeper than 32 levels"),
        (b'{"token": "\\ud800"}', "unpaired UTF-16 surrogate"),
    ],
)
def test_ambiguous_or_hostile_json_is_refused(body, why):
    with pytest.raises(InvalidPayload, match=why):
        token_from_body(body)
