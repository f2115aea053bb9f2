"""The provenance statement of an upload: a compact JWS signed with the minter's keys.

``GET /_/provenance/<project>/<file name>`` answers one for every file the upload gate passed to
the index and the registry recorded: which file (name, SHA-256, size), which project and
version, and where it came from (the provenance of the upload token that carried it: provider,
repository, workflow, ref, commit, run), signed with the same keys as upload tokens, so anyone
holding ``/_/oidc/jwks`` verifies it offline. Its header's ``typ`` is :data:`TYP` and it has no
``aud`` and no ``exp``: it is never an upload token, and an upload token is never a statement.
Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from trustpub.messages.errors import InvalidToken
from trustpub.messages.text import b64, unb64
from trustpub.messages.uploadtoken import PublicKey
from trustpub.messages.v1 import UploadRecord

TYP = "trustpub-provenance+jwt"
MAX_STATEMENT_CHARS = 65536
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NORMALIZE = re.compile(r"[-_.]+")


def normalize(name: str) -> str:
    """A project name as PEP 503 compares them."""
    return _NORMALIZE.sub("-", name).lower()


def distribution_of(filename: str) -> str | None:
    """The distribution name a wheel or sdist file name carries, or None."""
    if filename.endswith(".whl"):
        parts = filename.removesuffix(".whl").split("-")
        return parts[0] if len(parts) in {5, 6} and all(parts) else None
    for suffix in (".tar.gz", ".zip"):
        if filename.endswith(suffix):
            name, sep, version = filename.removesuffix(suffix).rpartition("-")
            return name if sep and name and version else None
    return None


def claims(record: UploadRecord, *, issuer: str, issued_at: int) -> dict[str, Any]:
    """What a statement says about ``record``."""
    return {
        "iss": issuer,
        "iat": issued_at,
        "sub": f"{record.project}/{record.filename}",
        "upload": {
            "id": record.upload_id,
            "project": record.project,
            "version": record.version,
            "filename": record.filename,
            "sha256": record.sha256,
            "size": record.size,
            "uploaded_at": record.uploaded_at,
        },
        "mint_id": record.mint_id,
        "publisher_id": record.publisher_id,
        "provenance": dict(record.provenance),
    }


def header(alg: str, kid: str) -> bytes:
    """The encoded protected header of a statement signed by key ``kid``."""
    return b64(orjson.dumps({"alg": alg, "kid": kid, "typ": TYP}))


def signing_input(encoded_header: bytes, statement: Mapping[str, Any]) -> bytes:
    return encoded_header + b"." + b64(orjson.dumps(dict(statement)))


def verify(jws: str, *, keys: Mapping[str, PublicKey], issuer: str | None = None) -> dict[str, Any]:
    """The claims of a statement signed by one of ``keys`` (and issued by ``issuer``, if given).

    Raises:
        InvalidToken: not a statement, not signed by one of ``keys``, or malformed.
    """
    parts = jws.strip().split(".")
    if len(jws) > MAX_STATEMENT_CHARS or len(parts) != 3:
        raise InvalidToken("not a provenance statement")
    try:
        head = orjson.loads(unb64(parts[0]))
        body = orjson.loads(unb64(parts[1]))
        sig = unb64(parts[2])
    except (ValueError, orjson.JSONDecodeError):
        raise InvalidToken("not a provenance statement") from None
    if not isinstance(head, dict) or head.get("typ") != TYP or not isinstance(body, dict):
        raise InvalidToken("not a provenance statement")
    kid = head.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None or head.get("alg") != key.alg:
        raise InvalidToken("the statement is not signed with any of the given keys")
    if not key.verify(sig, f"{parts[0]}.{parts[1]}".encode()):
        raise InvalidToken("the statement's signature does not verify")
    if issuer is not None and body.get("iss") != issuer:
        raise InvalidToken(f"the statement was issued by {str(body.get('iss'))[:80]!r}, not {issuer!r}")
    upload = body.get("upload")
    if not isinstance(upload, dict) or not _SHA256.fullmatch(str(upload.get("sha256", ""))):
        raise InvalidToken("the statement names no file")
    return body
