"""Upload gate settings (``TRUSTPUB_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from trustpub.runtime.config import CommonSettings, HttpSettings, UploadTokenCheckSettings


@dataclass(frozen=True, kw_only=True)
class Settings(CommonSettings, HttpSettings, UploadTokenCheckSettings):
    ops_port: int = 9105
    http_port: int = 8001
    # Where the index takes uploads (pypiserver: its root; devpi: the index URL; Nexus and
    # Artifactory: the repository's upload URL), and the index's own credentials: a user and a
    # password from a Secret (TRUSTPUB_INDEX_PASSWORD) or a file (TRUSTPUB_INDEX_PASSWORD_FILE).
    index_upload_url: str = ""
    index_username: str = ""
    index_password: str = ""
    index_password_file: Path | None = None
    # The CA of the index's certificate, when it speaks https with a private CA.
    index_tls_ca: Path | None = None
    # Seconds to connect to the index, and without progress (the index reads nothing or
    # answers nothing) before the upload is answered 503.
    index_connect_timeout: float = 5.0
    index_timeout: float = 60.0
    # The largest file accepted (PyPI's default limit: 100 MB), 413 beyond; and the bytes of
    # the form's other fields (metadata, description), 400 beyond.
    max_upload_bytes: int = 100 * 1024 * 1024
    max_metadata_bytes: int = 2 * 1024 * 1024
    # A client that sends nothing for this long is cut off (its upload goes nowhere).
    body_idle_timeout: float = 30.0
    # When set, /_/oidc/* is passed to the gateway at this URL: clients derive the OIDC
    # URLs from the upload URL's host, so the upload host must answer them (README, "The upload
    # gate"). Leave empty when a proxy in front routes /_/oidc/ to the gateway itself.
    gateway_url: str = ""

    def index_password_value(self) -> str:
        """The index's password: the file's first line wins over the variable.

        Raises:
            OSError: the file is unreadable.
        """
        if self.index_password_file is not None:
            if not self.index_password_file.exists():
                return ""  # the optional Secret key of k8s/base/gate, not given: no password
            return (
                self.index_password_file.read_text().splitlines()[0]
                if self.index_password_file.stat().st_size
                else ""
            )
        return self.index_password

    def __post_init__(self) -> None:
        super().__post_init__()
        url = urlsplit(self.index_upload_url)
        self.require(
            url.scheme in {"http", "https"} and bool(url.hostname),
            f"TRUSTPUB_INDEX_UPLOAD_URL must be the index's http(s) upload URL: {self.index_upload_url!r}",
        )
        self.require_positive("index_connect_timeout", "index_timeout", "body_idle_timeout")
        self.require(
            self.max_upload_bytes >= 1 and self.max_metadata_bytes >= 1024,
            "TRUSTPUB_MAX_UPLOAD_BYTES must be positive and TRUSTPUB_MAX_METADATA_BYTES at least 1024",
        )
        self.require(
            not self.gateway_url or urlsplit(self.gateway_url).scheme in {"http", "https"},
            f"TRUSTPUB_GATEWAY_URL must be an http(s) URL, got {self.gateway_url!r}",
        )
