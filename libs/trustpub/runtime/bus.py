"""How a service joins the bus: its NATS identity, TLS, and the secrets it holds.

Every service connects as its own NATS user: an nkey seed (``<service>.nk`` in
``TRUSTPUB_BUS_SECRETS_DIR``, or ``TRUSTPUB_NATS_NKEY_SEED_FILE``), a ``.creds`` file for an
operator-mode NATS, or a user and password in the URL. It refuses to start with none, and
without TLS (unless the operator says the network encrypts: ``TRUSTPUB_NATS_PLAINTEXT``). The
TLS handshake comes first, before the server says anything, so nothing (not the nkey
challenge either) ever crosses the wire in clear.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from trustpub.messages import uploadtoken
from trustpub.messages.endpoints import SERVICES, inbox_prefix, pair_name, seal_pairs
from trustpub.runtime.config import CommonSettings, ConfigError
from trustpub.runtime.seal import new_ring_line, write_secret

# nkey encoding (the NATS nkeys format): base32 of prefix byte(s), the 32-byte key and a
# CRC-16 (XMODEM) in little-endian.
_PREFIX_SEED = 18 << 3
_PREFIX_USER = 20 << 3

_USERINFO = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<password>[^@/\s]+)@", re.IGNORECASE
)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    if "@" not in text or "://" not in text:
        return text
    return _USERINFO.sub(r"\g<scheme>\g<user>:***@", text)


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _encode(data: bytes) -> str:
    return base64.b32encode(data + _crc16(data).to_bytes(2, "little")).decode("ascii").rstrip("=")


def new_user_nkey() -> tuple[str, str]:
    """A new NATS user nkey: (seed, public key)."""
    raw = os.urandom(32)
    seed = _encode(bytes([_PREFIX_SEED | (_PREFIX_USER >> 5), (_PREFIX_USER & 31) << 3]) + raw)
    return seed, public_of(raw)


def public_of(raw: bytes) -> str:
    public = ed25519.Ed25519PrivateKey.from_private_bytes(raw).public_key()
    return _encode(
        bytes([_PREFIX_USER])
        + public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def public_key_of_seed(seed: str) -> str:
    """The public key of a user nkey seed.

    Raises:
        ValueError: not a user seed, or its checksum does not match.
    """
    text = seed.strip()
    try:
        data = base64.b32decode(text + "=" * (-len(text) % 8))
    except ValueError as exc:
        raise ValueError("not an nkey seed (base32)") from exc
    if len(data) != 36 or int.from_bytes(data[-2:], "little") != _crc16(data[:-2]):
        raise ValueError("not an nkey seed (length or checksum)")
    if data[0] >> 3 != _PREFIX_SEED >> 3 or ((data[0] & 7) << 5 | data[1] >> 3) != _PREFIX_USER:
        raise ValueError("not a user nkey seed")
    return public_of(data[2:34])


def seed_file(settings: CommonSettings, service: str) -> Path | None:
    """This service's nkey seed file, if it has one."""
    if settings.nats_nkey_seed_file is not None:
        return settings.nats_nkey_seed_file
    if settings.bus_secrets_dir is not None:
        candidate = settings.bus_secrets_dir / f"{service}.nk"
        if candidate.exists():
            return candidate
    return None


def tls_context(settings: CommonSettings) -> ssl.SSLContext:
    """Verifies the server against ``TRUSTPUB_NATS_TLS_CA`` (else the system's CAs) and
    presents ``TRUSTPUB_NATS_TLS_CERT``/``_KEY`` when the server asks for a client certificate.

    Raises:
        ConfigError: a file is unreadable or not a certificate or key.
    """
    try:
        ctx = ssl.create_default_context(cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.nats_tls_cert is not None:
            key = str(settings.nats_tls_key) if settings.nats_tls_key else None
            ctx.load_cert_chain(str(settings.nats_tls_cert), key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TRUSTPUB_NATS_TLS_*: {exc}") from exc
    return ctx


def connect_options(settings: CommonSettings, service: str, root: str) -> dict[str, Any]:
    """Keyword arguments of ``nats.connect`` for ``service``: identity, TLS, private inbox.

    Raises:
        ConfigError: no credentials, or no TLS while plaintext was not allowed.
    """
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(root, service)}
    url = urlsplit(settings.nats_url)
    seed = seed_file(settings, service)
    if settings.nats_creds_file is not None:
        options["user_credentials"] = str(settings.nats_creds_file)
    elif seed is not None:
        options["nkeys_seed"] = str(seed)
    elif not url.username:
        where = (
            f"{settings.bus_secrets_dir}/{service}.nk"
            if settings.bus_secrets_dir
            else "TRUSTPUB_BUS_SECRETS_DIR"
        )
        msg = (
            f"the {service} service has no NATS credentials: give it its nkey seed ({where}, or "
            "TRUSTPUB_NATS_NKEY_SEED_FILE), a .creds file (TRUSTPUB_NATS_CREDS_FILE), "
            "or a user in TRUSTPUB_NATS_URL"
        )
        raise ConfigError(msg)
    if settings.nats_plaintext:
        return options
    options["tls"] = tls_context(settings)
    options["tls_handshake_first"] = settings.nats_tls_handshake_first
    if settings.nats_tls_server_name:
        options["tls_hostname"] = settings.nats_tls_server_name
    return options


# --- a deployment's secrets, as `trustpub bus init` writes them -----------------------------

MINTER_KEY_FILE = "minter.jwk"


def init_secrets(directory: Path) -> list[Path]:
    """Create what is missing in ``directory``: each service's nkey seed (``<service>.nk``),
    one seal key ring per (sender, receiver) pair (``<sender>-<receiver>.keys``) and the
    minter's signing key (``minter.jwk``), each readable by its owner only. Existing files are
    kept: running it again changes nothing. Returns the files created."""
    created: list[Path] = []
    for service in SERVICES:
        path = directory / f"{service}.nk"
        if not path.exists():
            write_secret(path, new_user_nkey()[0] + "\n")
            created.append(path)
    for pair in seal_pairs():
        path = directory / f"{pair_name(*pair)}.keys"
        if not path.exists():
            write_secret(
                path,
                f"# seal keys {pair[0]} -> {pair[1]}: the first line seals, every line checks\n"
                + new_ring_line(),
            )
            created.append(path)
    path = directory / MINTER_KEY_FILE
    if not path.exists():
        write_secret(path, uploadtoken.generate_signing_key() + "\n")
        created.append(path)
    return created


def public_keys(directory: Path) -> dict[str, str]:
    """The public nkey of every service whose seed is in ``directory``.

    Raises:
        ConfigError: a seed is missing or unusable.
    """
    keys: dict[str, str] = {}
    for service in SERVICES:
        path = directory / f"{service}.nk"
        try:
            keys[service] = public_key_of_seed(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    return keys


def minter_key_ids(text: str) -> list[str]:
    """The key ids (RFC 7638 thumbprints) of a minter key file: a JWK or a JWK Set.

    Raises:
        ValueError: not JSON, or a key that is not usable.
    """
    doc = json.loads(text)
    items = doc.get("keys") if isinstance(doc, dict) and "keys" in doc else [doc]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError("not a JWK or a JWK Set")
    return [uploadtoken.key_id(item) for item in items]
