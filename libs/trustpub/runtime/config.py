"""Settings read from ``TRUSTPUB_*`` environment variables, or from a dict in tests.

Each service declares a frozen dataclass of its settings and builds it with
:func:`load`; a value that does not parse is a :class:`ConfigError` naming the variable.

A setting more than one service reads is declared here once, with its default, its
validation and why it is what it is: a service's settings inherit :class:`CommonSettings`
and the groups below it reads (``class Settings(CommonSettings, LeewaySettings)``), so two
services cannot disagree on a default or on what is valid. A service that checks settings
of its own does so in ``__post_init__`` after ``super().__post_init__()``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from trustpub.runtime.seal import MAX_VALIDITY_S

PREFIX = "TRUSTPUB_"

T = TypeVar("T")


class ConfigError(Exception):
    """A setting is missing or does not parse; the message names the variable."""


def env_name(field: str) -> str:
    return PREFIX + field.upper()


def _parse(name: str, raw: str, typ: Any) -> Any:  # noqa: ANN401, C901, PLR0911  (one branch per setting type)
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw == "":
            return None
        return _parse(name, raw, args[0])
    if typ is str:
        return raw
    if typ is bool:
        low = raw.strip().lower()
        if low in {"1", "true", "yes", "on"}:
            return True
        if low in {"0", "false", "no", "off", ""}:
            return False
        msg = f"{name} must be true or false, got {raw!r}"
        raise ConfigError(msg)
    if typ in (int, float):
        try:
            return typ(raw)
        except ValueError:
            kind = "a whole number" if typ is int else "a number"
            msg = f"{name} must be {kind}, got {raw!r}"
            raise ConfigError(msg) from None
    if typ is Path:
        return Path(raw)
    if origin is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    msg = f"{name}: unsupported setting type {typ!r}"
    raise ConfigError(msg)


def read_secret(name: str, path: str) -> str:
    """The content of the file ``path`` that setting ``name`` (a ``TRUSTPUB_*_FILE``) names,
    without the line ending a secret file usually has.

    Raises:
        ConfigError: the file cannot be read.
    """
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{name}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
        # A UnicodeDecodeError holds the file's bytes: a secret.
        raise ConfigError(msg) from None


def load(cls: type[T], env: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` (a dataclass) from ``env`` (default: ``os.environ``).

    Field ``request_timeout`` is read from ``TRUSTPUB_REQUEST_TIMEOUT``; fields without a
    default are required. A text setting may come from a file instead: ``TRUSTPUB_<NAME>_FILE``
    (a mounted Secret: a secret in a file is not in the process's environment, which ``ps e``
    and ``/proc/<pid>/environ`` show), unless the settings have a ``<name>_file`` of their own
    (``TRUSTPUB_MINTER_KEY_FILE``). Setting both forms is an error.

    Raises:
        ConfigError: a required variable is unset or a value does not parse.
    """
    source = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = {f.name for f in fields}
    values: dict[str, Any] = {}
    for field in fields:
        name = env_name(field.name)
        if (
            f"{field.name}_file" not in names
            and hints[field.name] in (str, str | None)
            and name + "_FILE" in source
        ):
            if name in source:
                msg = f"{name} and {name}_FILE are both set: keep one"
                raise ConfigError(msg)
            values[field.name] = _parse(
                name, read_secret(name + "_FILE", source[name + "_FILE"]), hints[field.name]
            )
        elif name in source:
            values[field.name] = _parse(name, source[name], hints[field.name])
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            msg = f"{name} is required"
            raise ConfigError(msg)
    try:
        return cls(**values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Settings:
    """The end of the ``__post_init__`` chain of a service's settings, and its checks."""

    def __post_init__(self) -> None:
        """Nothing left to check; a ValueError raised on the way becomes a ConfigError
        naming the problem (:func:`load`)."""

    def require(self, condition: bool, message: str) -> None:  # noqa: FBT001  (reads as a sentence)
        """A check in ``__post_init__``.

        Raises:
            ValueError: ``condition`` does not hold; ``message`` names the variable.
        """
        if not condition:
            raise ValueError(message)

    def require_positive(self, *fields: str) -> None:
        """:meth:`require` that each of ``fields`` is positive.

        Raises:
            ValueError: one is not; the message names its variable and value.
        """
        for field in fields:
            value = getattr(self, field)
            self.require(value > 0, f"{env_name(field)} must be positive, got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CommonSettings(_Settings):
    """Settings every service has."""

    nats_url: str = "nats://127.0.0.1:4222"
    subject_root: str = "trustpub"
    # The bus is a trust boundary (runtime/bus.py): each service is its own NATS user and holds
    # the seal keys of the hand-overs it takes part in. TRUSTPUB_BUS_SECRETS_DIR holds them as
    # `trustpub bus init` writes them (<service>.nk, <sender>-<receiver>.keys); a service reads
    # only its own. The explicit settings below win over the directory.
    bus_secrets_dir: Path | None = None
    nats_nkey_seed_file: Path | None = None
    nats_creds_file: Path | None = None  # a NATS .creds file (JWT and seed), for operator-mode servers
    # TLS to NATS: the CA that signed the server's certificate (else the system's CAs), a client
    # certificate and key where the server asks for one, the name the server's certificate
    # carries when it is not the URL's host.
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    nats_tls_server_name: str = ""
    # TLS from the first byte (nats-server `tls { handshake_first: true }`): the server's INFO and
    # the nkey challenge never cross the wire in clear. Off only for servers that cannot.
    nats_tls_handshake_first: bool = True
    # Plain TCP: only where the network itself encrypts (a service mesh with mTLS); logged.
    nats_plaintext: bool = False
    ops_host: str = "127.0.0.1"
    ops_port: int = 0
    log_level: str = "info"
    log_format: str = "json"  # "json" for machines, "console" for people (make up)
    # Seconds between "not ready" and closing the NATS connection on SIGTERM, so that
    # load balancers and NATS stop sending new work first.
    drain_grace: float = 1.0
    # Bounds of the JetStream events stream besides its age (7 days): past either, the oldest
    # events are discarded. NATS reserves max_bytes of its JetStream storage for the stream.
    # Sizing: docs/metrics.md, "The events stream".
    events_max_bytes: int = 256 * 1024 * 1024
    events_max_msgs: int = 1_000_000


# -- settings more than one service reads ---------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class IssuersFileSettings(_Settings):
    """The issuers a service knows (jwks, verifier; the registry's audit names only these)."""

    # Operator-registered issuers and overrides of the built-in four (TOML); see
    # trustpub.providers.issuers. Only issuers configured here or built in are ever fetched.
    issuers_file: Path | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class IssuerSettings(IssuersFileSettings):
    """The issuers a service accepts tokens of (jwks, verifier)."""

    # Providers switched off (comma-separated), e.g. "google,activestate".
    disabled_providers: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExchangeSettings(_Settings):
    """What clients exchange their tokens for (gateway, verifier)."""

    # The ``aud`` every token must carry, exactly (GET /_/oidc/audience tells clients); PyPI
    # uses "pypi". Give every index its own so a token meant for another index is refused.
    audience: str = "trustpub"
    # Trusted Publishing as a whole: off answers audience with 403 and every exchange with
    # not-enabled.
    enabled: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(bool(self.audience), "TRUSTPUB_AUDIENCE must not be empty")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LeewaySettings(_Settings):
    """Clock skew allowed on a token's exp/iat/nbf (verifier); the registry keeps a used token
    id past its token's exp by this plus a margin, so it cannot be replayed while still
    accepted."""

    # Seconds: PyPI's value.
    leeway: int = 30

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(
            0 <= self.leeway <= 300, f"TRUSTPUB_LEEWAY must be between 0 and 300 seconds, got {self.leeway}"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeyStalenessSettings(_Settings):
    """How old an issuer's key set may be and still verify tokens (jwks, verifier)."""

    # Seconds: a set last fetched longer ago than this is not usable. The verifiers answer its
    # issuer's tokens with unavailable (503) instead of trusting keys the issuer may have
    # withdrawn meanwhile; the jwks service reports not ready: 24 h (DESIGN.md, "Keys of
    # identity providers").
    key_staleness: float = 86400.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_positive("key_staleness")


@dataclasses.dataclass(frozen=True, kw_only=True)
class UploadTokenSettings(_Settings):
    """What upload tokens say (the minter writes it; the gateway and the gate check it)."""

    token_prefix: str = "trustpub-"
    token_issuer: str = "trustpub"
    token_audience: str = "trustpub-index"


@dataclasses.dataclass(frozen=True, kw_only=True)
class UploadTokenCheckSettings(UploadTokenSettings):
    """What a service that verifies upload tokens trusts (gateway, gate)."""

    # The minter's key ids (RFC 7638 thumbprints, comma-separated): only these verify upload
    # tokens (and are served at /_/oidc/jwks), whatever the bus answers. `trustpub bus init`
    # prints them; list the new one too while rotating.
    minter_key_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(
            bool(self.minter_key_ids),
            "TRUSTPUB_MINTER_KEY_IDS is required: the key ids of the minter's signing keys "
            "(`trustpub bus init` prints them)",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class HttpSettings(_Settings):
    """The public HTTP listener (gateway, gate)."""

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # uv, twine and the GitHub action speak only https to an index that is not local: the
    # certificate (or terminate TLS in front of the service).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # End-to-end deadline of one request in seconds: every service hop gets what is left of it.
    request_timeout: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_positive("request_timeout")
        # A stage refuses a request whose deadline lies further ahead (runtime/seal.py).
        self.require(
            self.request_timeout <= MAX_VALIDITY_S,
            f"TRUSTPUB_REQUEST_TIMEOUT must be at most {MAX_VALIDITY_S:.0f} s, got {self.request_timeout}",
        )
