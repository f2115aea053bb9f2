"""Keys of the JetStream key-value bucket that holds the issuers' key sets.

The jwks service writes, and the verifiers read, the entry of an issuer under the same key,
so both import :func:`kv_key` from here.
"""

from __future__ import annotations

import base64


def kv_key(issuer: str) -> str:
    """The bucket key of ``issuer``: base64url of its UTF-8 bytes, without padding.

    An issuer is a URL, whose ``:`` and ``/`` are not allowed in a key-value key; base64url
    maps every string onto ``[A-Za-z0-9_-]``, which is, and keeps distinct issuers distinct.
    """
    return base64.urlsafe_b64encode(issuer.encode()).rstrip(b"=").decode("ascii")
