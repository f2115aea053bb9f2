"""``trustpub provenance verify FILE --url https://upload-host``: which source made this file.

Hashes the file, fetches its provenance statement (``GET /_/provenance/<project>/<file>``) and
the host's minter keys (``/_/oidc/jwks``), verifies the statement's signature offline and that
it names this very file (name and SHA-256), then prints where it came from. ``--jwks`` and
``--statement`` take saved copies instead (nothing fetched). A file the gate never passed has no
statement: that is said, never guessed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from trustpub.messages import InvalidToken, provenance, uploadtoken

EXIT_VERIFIED = 0
EXIT_NOT_VERIFIED = 1


class ProvenanceCommandError(Exception):
    """The file could not be verified; the message says why."""


def add_commands(commands: Any, parser_class: type) -> None:  # noqa: ANN401  (argparse's private subparsers type)
    group = commands.add_parser("provenance", help="verify where a file uploaded through the gate came from")
    actions = group.add_subparsers(
        dest="action", metavar="{verify}", required=True, parser_class=parser_class
    )
    verify = actions.add_parser(
        "verify", help="hash FILE, fetch its signed provenance from the upload host, verify it offline"
    )
    verify.add_argument("file", type=Path)
    verify.add_argument("--url", default="", help="the upload host, e.g. https://pypi.example.org")
    verify.add_argument("--project", default="", help="the project (default: from the file name)")
    verify.add_argument("--ca", type=Path, default=None, help="the CA of the host's certificate (PEM)")
    verify.add_argument("--jwks", type=Path, default=None, help="a saved /_/oidc/jwks document (no fetch)")
    verify.add_argument("--statement", type=Path, default=None, help="a saved statement (no fetch)")
    verify.add_argument("--issuer", default="trustpub", help="the issuer the statement must name")
    verify.add_argument("--json", action="store_true", help="print the verified statement as JSON")


def _get(url: str, ca: Path | None) -> bytes:
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    request = urllib.request.Request(url, headers={"Accept": "application/jose, application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as resp:  # noqa: S310
            return bytes(resp.read(1 << 20))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ProvenanceCommandError(
                f"no provenance: the gate at {url} recorded no upload of this file"
            ) from None
        raise ProvenanceCommandError(f"{url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ProvenanceCommandError(f"{url} is unreachable: {exc}") from None


def _keys(document: bytes) -> dict[str, uploadtoken.PublicKey]:
    try:
        items = json.loads(document)["keys"]
        return {key.kid: key for key in (uploadtoken.public_key(obj) for obj in items)}
    except (ValueError, KeyError, TypeError) as exc:
        raise ProvenanceCommandError(f"the key set is not usable: {exc}") from None


def verify_file(args: argparse.Namespace) -> dict[str, Any]:
    """The verified statement of ``args.file``.

    Raises:
        ProvenanceCommandError: no statement, a bad signature, or a statement about another file.
    """
    path: Path = args.file
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise ProvenanceCommandError(f"{path}: {exc.strerror}") from None
    project = args.project or provenance.distribution_of(path.name)
    if not project:
        raise ProvenanceCommandError(f"{path.name} is not a wheel or sdist file name: give --project")
    base = args.url.rstrip("/")
    if (args.statement is None or args.jwks is None) and not base:
        raise ProvenanceCommandError("give --url (the upload host), or --statement and --jwks")
    quoted = "/".join(urllib.parse.quote(p, safe="") for p in (provenance.normalize(project), path.name))
    jws = (
        args.statement.read_text()
        if args.statement
        else _get(f"{base}/_/provenance/{quoted}", args.ca).decode()
    )
    keys = _keys(args.jwks.read_bytes() if args.jwks else _get(f"{base}/_/oidc/jwks", args.ca))
    try:
        claims = provenance.verify(jws, keys=keys, issuer=args.issuer)
    except InvalidToken as exc:
        raise ProvenanceCommandError(f"the statement does not verify: {exc.description}") from None
    upload = claims["upload"]
    if upload.get("filename") != path.name:
        raise ProvenanceCommandError(f"the statement is about {upload.get('filename')!r}, not {path.name!r}")
    if upload["sha256"] != digest.hexdigest():
        raise ProvenanceCommandError(
            f"this file is not the one uploaded: its SHA-256 is {digest.hexdigest()}, the upload's "
            f"was {upload['sha256']}"
        )
    return claims


def describe(claims: dict[str, Any]) -> str:
    upload, source = claims["upload"], claims.get("provenance", {})
    when = dt.datetime.fromtimestamp(int(upload.get("uploaded_at", 0)), dt.UTC).isoformat()
    rows = [
        ("file", upload.get("filename")),
        ("sha256", f"{upload.get('sha256')} (matches this file)"),
        ("size", upload.get("size")),
        ("project", f"{upload.get('project')} {upload.get('version')}"),
        ("uploaded", when),
        ("provider", source.get("provider")),
        ("repository", source.get("repository") or source.get("email")),
        ("workflow", source.get("workflow")),
        ("ref", source.get("ref")),
        ("commit", source.get("sha")),
        ("run", source.get("run_id")),
        ("environment", source.get("environment")),
        ("issuer", source.get("issuer")),
        ("mint id", claims.get("mint_id")),
    ]
    lines = [f"{name:12} {value}" for name, value in rows if value not in (None, "")]
    lines.append(f"verified: signed by {claims.get('iss')}'s minter; this file is the one that was uploaded")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    """Run ``provenance verify``; returns what it prints.

    Raises:
        ProvenanceCommandError: not verified.
    """
    claims = verify_file(args)
    return json.dumps(claims, indent=2, sort_keys=True) if args.json else describe(claims)
