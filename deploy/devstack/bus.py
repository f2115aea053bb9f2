"""The bus of a development stack: NATS with the generated authorization and TLS.

Under one directory (``.run/bus`` for ``make up``, a temporary one for the tests and the
benchmark): a development CA and the server's certificate for 127.0.0.1 and localhost (and any
``server_names``: the Tiltfile's NATS is reached by its Kubernetes service name), the
deployment's secrets as ``trustpub bus init`` writes them (each service's nkey seed, the seal
key rings, the minter's signing key), and the nats-server configuration generated from the
endpoint declarations. Everything is created once and reused; private keys are 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trustpub.messages import authorization
from trustpub.runtime.bus import (
    MINTER_KEY_FILE,
    init_secrets,
    minter_key_ids,
    new_user_nkey,
    public_key_of_seed,
    public_keys,
)
from trustpub.runtime.seal import write_secret

# Renewed when less than this is left: a `.run/` kept for months still starts.
_RENEW_BEFORE = dt.timedelta(days=30)
_VALIDITY = dt.timedelta(days=365)
# The server certificate is always valid for these (`make up`, the tests, a port-forward).
_DEFAULT_NAMES = ("localhost", "127.0.0.1")
# The devstack's own readiness probe (servers.py): it may ask JetStream for the account's
# information and read the answer, nothing else (no subject of any root, no stream, no bucket).
PROBE_SUBJECT = "$JS.API.INFO"
PROBE_INBOX = "_INBOX.devstack-probe"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _valid(path: Path, names: tuple[str, ...] = ()) -> bool:
    """``path`` is a certificate that does not run out soon and is valid for ``names``."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    if names:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        if not set(_general_names(names)) <= set(san):
            return False
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > _RENEW_BEFORE


def _general_names(names: tuple[str, ...]) -> list[x509.GeneralName]:
    """DNS names, or IP addresses for those that parse as one."""
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _certificate(  # noqa: PLR0913  (what a certificate says)
    subject: str,
    public: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    *,
    ca: bool,
    names: tuple[str, ...] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_general_names(_DEFAULT_NAMES + names)),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signer, hashes.SHA256())


@dataclass
class DevBus:
    """The secrets, certificates and server configuration of one development bus.

    ``admin``: also create an ``admin`` NATS user without restrictions, for the test suite's
    own probes (never for ``make up``: there, no identity may do more than its declarations).
    Always a ``probe`` user too, whose only permission is asking JetStream for the account's
    information (:data:`PROBE_SUBJECT`): how the devstack tells that the server it started
    is ready (servers.py).
    ``server_names``: host names (or IP addresses) the server's certificate is valid for besides
    localhost and 127.0.0.1, e.g. a Kubernetes service name; a certificate that lacks one is
    made again.
    """

    directory: Path
    admin: bool = False
    server_names: tuple[str, ...] = ()
    _public: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def secrets(self) -> Path:
        return self.directory / "secrets"

    @property
    def ca_cert(self) -> Path:
        return self.directory / "tls" / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "tls" / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "tls" / "server-key.pem"

    @property
    def admin_seed(self) -> Path:
        return self.directory / "admin.nk"

    @property
    def probe_seed(self) -> Path:
        return self.directory / "probe.nk"

    @property
    def minter_key(self) -> Path:
        return self.secrets / MINTER_KEY_FILE

    def ensure(self) -> DevBus:
        """Create whatever is missing (certificates are renewed when they run out soon)."""
        init_secrets(self.secrets)
        self._tls()
        if self.admin and not self.admin_seed.exists():
            write_secret(self.admin_seed, new_user_nkey()[0] + "\n")
        if not self.probe_seed.exists():
            write_secret(self.probe_seed, new_user_nkey()[0] + "\n")
        self._public = public_keys(self.secrets)
        return self

    def _tls(self) -> None:
        if _valid(self.ca_cert) and _valid(self.server_cert, self.server_names):
            return
        for path in (self.ca_cert, self.server_cert, self.server_key):
            path.unlink(missing_ok=True)
        self.ca_cert.parent.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _certificate("trustpub development CA", ca_key.public_key(), ca_key, None, ca=True)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(
            "localhost", key.public_key(), ca_key, ca.subject, ca=False, names=self.server_names
        )
        self.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_secret(self.server_key, _pem_key(key))
        # The CA's key is not kept: nothing else is ever signed with it.

    def minter_key_ids(self) -> list[str]:
        return minter_key_ids(self.minter_key.read_text())

    def client_env(self) -> dict[str, str]:
        """What every service of the stack needs to join this bus (each reads only its own
        secrets from the directory)."""
        return {
            "TRUSTPUB_BUS_SECRETS_DIR": str(self.secrets),
            "TRUSTPUB_NATS_TLS_CA": str(self.ca_cert),
            "TRUSTPUB_MINTER_KEY_FILE": str(self.minter_key),
            "TRUSTPUB_MINTER_KEY_IDS": ",".join(self.minter_key_ids()),
        }

    def server_config(self, *, roots: tuple[str, ...], port: int, monitor_port: int, store_dir: Path) -> str:
        """A nats-server configuration: TLS first, JetStream, the generated authorization."""
        extra: list[dict[str, Any]] = [
            {
                "nkey": public_key_of_seed(self.probe_seed.read_text()),
                "permissions": {
                    "publish": {"allow": [PROBE_SUBJECT]},
                    "subscribe": {"allow": [f"{PROBE_INBOX}.>"]},
                },
            }
        ]
        if self.admin:
            extra.append({"nkey": public_key_of_seed(self.admin_seed.read_text())})
        tls = {
            "cert_file": str(self.server_cert),
            "key_file": str(self.server_key),
            # TLS from the first byte: no INFO, no nkey challenge in clear (runtime/bus.py).
            "handshake_first": True,
            "timeout": 5,
        }
        head = {
            "listen": f"127.0.0.1:{port}",
            "http": f"127.0.0.1:{monitor_port}",
            "jetstream": {"store_dir": str(store_dir)},
            "tls": tls,
        }
        body = "\n".join(f"{key}: {json.dumps(value)}" for key, value in head.items())
        return body + "\n" + authorization.render(roots, self._public, extra)
