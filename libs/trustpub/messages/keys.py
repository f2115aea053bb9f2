"""Keys of the JetStream key-value bucket that holds the issuers' key sets, and the key ids
those sets may carry.

The jwks service writes, and the verifiers read, the entry of an issuer under the same key,
so both import :func:`kv_key` from here; both judge a ``kid`` by :data:`KID_RE`.
"""

from __future__ import annotations

import re

from trustpub.messages.text import b64

# RFC 7517 allows any string as a kid, and real issuers use more than [A-Za-z0-9._-]: RFC 7520's
# example key is "bilbo.baggins@hobbiton.example", hosted issuers use base64 with + / =. A kid
# is only a lookup key in trustpub (never a path or URL, and logged only quoted), so any
# printable ASCII is accepted, up to a length bound (DESIGN.md, "Hostile input").
KID_RE = re.compile(r"[\x20-\x7e]{1,128}")
KID_RULE = "1 to 128 printable ASCII characters"


def kv_key(issuer: str) -> str:
    """The bucket key of ``issuer``: base64url of its UTF-8 bytes, without padding.

    An issuer is a URL, whose ``:`` and ``/`` are not allowed in a key-value key; base64url
    maps every string onto ``[A-Za-z0-9_-]``, which is, and keeps distinct issuers distinct.
    """
    return b64(issuer.encode()).decode("ascii")
