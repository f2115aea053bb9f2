"""A real package index behind the upload gate, for ``make up`` and the tests: pypiserver.

pypiserver (from PyPI, the ``dev`` extra) serves ``<directory>/packages`` on 127.0.0.1 and takes
uploads only with the credentials of an htpasswd file written here: those are the gate's (the
index's own credentials, as an operator gives them to the gate), never a publisher's. Reads
(``/simple/``, ``/packages/``) are open, as on PyPI. The gate is the https front of the upload
host; :class:`DevCertificate` is its certificate, signed by a development CA that clients are
told to trust (``SSL_CERT_FILE`` for uv, ``REQUESTS_CA_BUNDLE`` for twine).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from deploy.devstack.bus import _certificate, _pem_key, _valid  # one way to make dev certificates
from deploy.devstack.servers import DevServerError, free_port, wait_for_port

from trustpub.runtime.seal import write_secret

# The user the gate uploads as (its own credentials at the index).
INDEX_USER = "trustpub-gate"


@dataclass
class DevCertificate:
    """A development CA and a server certificate for 127.0.0.1 and localhost, under
    ``directory`` (created once, renewed when near its end; the CA's key is not kept)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key(self) -> Path:
        return self.directory / "server-key.pem"

    def ensure(self) -> DevCertificate:
        if _valid(self.ca) and _valid(self.cert, ("127.0.0.1", "localhost")) and self.key.exists():
            return self
        for path in (self.ca, self.cert, self.key):
            path.unlink(missing_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _certificate("trustpub development CA (upload host)", ca_key.public_key(), ca_key, None, ca=True)
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = _certificate("localhost", key.public_key(), ca_key, ca.subject, ca=False)
        self.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        write_secret(self.key, _pem_key(key))
        return self

    def issuer(self) -> x509.Name:
        return x509.load_pem_x509_certificate(self.ca.read_bytes()).subject


@dataclass
class PypiServer:
    """pypiserver on 127.0.0.1:``port``: packages under ``directory/packages``, uploads only
    for :data:`INDEX_USER` with the password in ``directory/password`` (made once, 0600)."""

    directory: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The index's root: uploads are POSTed here, the simple index is ``simple/``."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def packages(self) -> Path:
        return self.directory / "packages"

    @property
    def password_file(self) -> Path:
        return self.directory / "password"

    @property
    def htpasswd(self) -> Path:
        return self.directory / "htpasswd"

    def _credentials(self) -> None:
        if not self.password_file.exists():
            write_secret(self.password_file, secrets.token_urlsafe(24) + "\n")
        with warnings.catch_warnings():
            # passlib imports the standard library's crypt, deprecated since Python 3.11.
            warnings.simplefilter("ignore", DeprecationWarning)
            from passlib.apache import HtpasswdFile  # noqa: PLC0415  (the dev extra's; pypiserver reads it)

        password = self.password_file.read_text().strip()
        ht = HtpasswdFile(str(self.htpasswd), new=True, default_scheme="apr_md5_crypt")
        ht.set_password(INDEX_USER, password)
        ht.save()
        self.htpasswd.chmod(0o600)

    def start(self, log_file: Path | None = None) -> PypiServer:
        self.packages.mkdir(parents=True, exist_ok=True)
        self._credentials()
        self.port = self.port or free_port()
        argv = [
            sys.executable,
            "-m",
            "pypiserver",
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--authenticate",
            "update",
            "--passwords",
            str(self.htpasswd),
            "--disable-fallback",
            str(self.packages),
        ]
        with (log_file or self.directory / "pypiserver.log").open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)  # noqa: S603
        try:
            wait_for_port(self.port, 30, self.proc)
        except DevServerError as exc:
            self.stop()
            raise DevServerError(f"pypiserver did not start: {exc}") from exc
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def files(self) -> list[str]:
        """The file names the index holds."""
        return (
            sorted(p.name for p in self.packages.iterdir() if p.is_file()) if self.packages.exists() else []
        )

    def gate_env(self) -> dict[str, str]:
        """The gate's settings for this index: where uploads go and the index's credentials."""
        return {
            "TRUSTPUB_INDEX_UPLOAD_URL": self.url,
            "TRUSTPUB_INDEX_USERNAME": INDEX_USER,
            "TRUSTPUB_INDEX_PASSWORD_FILE": str(self.password_file),
        }
