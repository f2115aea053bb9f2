"""The identity providers trustpub trusts: the built-in four, plus operator-registered ones.

An issuer is trusted only because the operator configured it; a token can never add one.
Configuration is a TOML file (``TRUSTPUB_ISSUERS_FILE``)::

    [[issuer]]
    issuer = "https://gitlab.example.com"      # exact ``iss`` string
    provider = "gitlab"                        # whose claim rules apply

    [[issuer]]                                 # development/test only: keys from loopback
    issuer = "https://token.actions.githubusercontent.com"
    provider = "github"
    discovery_url = "http://127.0.0.1:8900/.well-known/openid-configuration"
    allow_loopback_http = true

An entry whose ``issuer`` is a built-in one overrides that built-in's settings.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trustpub.providers import PROVIDERS, activestate, github, gitlab, google
from trustpub.runtime.config import ConfigError

# The built-in issuers' ``iss``, each its provider's (trustpub.providers.PROVIDERS).
GITHUB = github.ISSUER
GITLAB = gitlab.ISSUER
GOOGLE = google.ISSUER
ACTIVESTATE = activestate.ISSUER


@dataclasses.dataclass(frozen=True, kw_only=True)
class Issuer:
    """One trusted issuer and how its tokens are verified."""

    issuer: str
    provider: str
    # RS256 for all four seed providers (warehouse/oidc/services.py pins ["RS256"]).
    algorithms: tuple[str, ...] = ("RS256",)
    # Upper bound on exp - iat: a token claiming a longer life is refused. GitHub and
    # GitLab issue tokens valid for minutes, Google for one hour.
    max_lifetime: int = 3600
    # Where keys come from: the discovery document at ``discovery_url`` (by default
    # ``<issuer>/.well-known/openid-configuration``), or ``jwks_url`` directly.
    discovery_url: str = ""
    jwks_url: str = ""
    # Hosts besides the issuer's own on which the discovery document's ``jwks_uri`` (or
    # ``jwks_url``) may be: Google publishes its keys on www.googleapis.com, not on
    # accounts.google.com. Bare lowercase DNS names, set by the operator (or built in), never
    # taken from a response.
    jwks_hosts: tuple[str, ...] = ()
    # Development and tests only: allow http:// URLs on a loopback address.
    allow_loopback_http: bool = False
    enabled: bool = True
    builtin: bool = False

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            known = ", ".join(PROVIDERS)
            msg = f"issuer {self.issuer!r}: provider must be one of {known}, got {self.provider!r}"
            raise ConfigError(msg)
        if not self.algorithms or any(a not in ALLOWED_ALGORITHMS for a in self.algorithms):
            msg = f"issuer {self.issuer!r}: algorithms must be among {sorted(ALLOWED_ALGORITHMS)}"
            raise ConfigError(msg)
        for host in self.jwks_hosts:
            if not isinstance(host, str) or not _HOSTNAME.fullmatch(host):
                msg = (
                    f"issuer {self.issuer!r}: jwks_hosts entry {host!r} must be a lowercase DNS name "
                    "(no scheme, port, path or address)"
                )
                raise ConfigError(msg)
        _check_url(self.issuer, self, what="issuer", same_host=False)
        for what in ("discovery_url", "jwks_url"):
            value = getattr(self, what)
            if value:
                _check_url(value, self, what=what, same_host=True)

    @property
    def requires_jti(self) -> bool:
        """Whether every token must carry a ``jti``: GitHub's and GitLab's documented tokens do.

        Google ID tokens carry none, and ActiveState does not document one (PyPI checks no
        jti for either); their tokens are single-use by the hash of their signing input
        when they lack one.
        """
        return PROVIDERS[self.provider].requires_jti

    @property
    def discovery(self) -> str:
        return self.discovery_url or self.issuer.rstrip("/") + "/.well-known/openid-configuration"


# Asymmetric signature algorithms only: no HMAC (a shared secret), no "none".
ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "ES256", "ES384"})

# A DNS name of at least two labels: an extra keys host is a public name the operator
# vouches for, never an IP address or a single-label (intranet) name.
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?"
)


def is_loopback(host: str) -> bool:
    """``host`` is localhost or a loopback address (where http may be allowed)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origins(iss: Issuer, *, keys: bool) -> frozenset[tuple[str, int]]:
    """The (host, port) pairs an https URL of ``iss`` may point at: the issuer's own host and
    port, and for its keys also the ``jwks_hosts`` on port 443. A discovery document served by
    the issuer names its keys' URL, so the port is part of the check: another port on the same
    host may be another service (DESIGN.md, "Keys of identity providers")."""
    own = urlsplit(iss.issuer)
    pairs = {(own.hostname or "", own.port or 443)}
    if keys:
        pairs.update((host, 443) for host in iss.jwks_hosts)
    return frozenset(pairs)


def https_origin(url: str) -> tuple[str, int] | None:
    """(host, port) of an https URL without credentials; None for anything else.

    Raises:
        ValueError: the URL does not parse (a malformed port, say).
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.username is not None or parts.password is not None:
        return None
    return (parts.hostname or "", parts.port or 443)


def _check_url(url: str, iss: Issuer, *, what: str, same_host: bool) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        origin = https_origin(url)
    except ValueError as exc:
        msg = f"issuer {iss.issuer!r}: {what} {url!r} is not a URL"
        raise ConfigError(msg) from exc
    if parts.username or parts.password or not host:
        msg = f"issuer {iss.issuer!r}: {what} {url!r} must be an absolute URL without credentials"
        raise ConfigError(msg)
    if origin is not None:
        allowed = origins(iss, keys=what == "jwks_url")
        if same_host and origin not in allowed and not (iss.allow_loopback_http and is_loopback(host)):
            msg = f"issuer {iss.issuer!r}: {what} {url!r} must be on the issuer's own host and port"
            raise ConfigError(msg)
        return
    if parts.scheme == "http" and iss.allow_loopback_http and is_loopback(host):
        return
    msg = (
        f"issuer {iss.issuer!r}: {what} {url!r} must use https "
        "(http only on loopback with allow_loopback_http)"
    )
    raise ConfigError(msg)


BUILTIN: tuple[Issuer, ...] = tuple(
    Issuer(issuer=p.issuer, provider=p.name, builtin=True, **p.issuer_settings) for p in PROVIDERS.values()
)

_FIELDS = {f.name for f in dataclasses.fields(Issuer)} - {"builtin"}


class IssuerRegistry:
    """The configured issuers, looked up by exact ``iss`` string."""

    def __init__(self, issuers: Iterable[Issuer]) -> None:
        self._by_iss = {i.issuer: i for i in issuers}

    def get(self, iss: str) -> Issuer | None:
        """The issuer whose ``iss`` is exactly this string (no normalisation)."""
        return self._by_iss.get(iss)

    def __iter__(self) -> Any:  # noqa: ANN401
        return iter(self._by_iss.values())

    def __len__(self) -> int:
        return len(self._by_iss)

    @classmethod
    def from_entries(cls, entries: Iterable[Mapping[str, Any]], *, builtin: bool = True) -> IssuerRegistry:
        """Built-ins (unless ``builtin`` is false), then ``entries`` override or add.

        Raises:
            ConfigError: an entry has an unknown field or an invalid value.
        """
        by_iss = {i.issuer: i for i in BUILTIN} if builtin else {}
        for entry in entries:
            unknown = set(entry) - _FIELDS
            if unknown:
                msg = f"issuer entry has unknown fields: {', '.join(sorted(unknown))}"
                raise ConfigError(msg)
            if "issuer" not in entry:
                msg = "issuer entry lacks 'issuer'"
                raise ConfigError(msg)
            base = by_iss.get(entry["issuer"])
            values: dict[str, Any] = dataclasses.asdict(base) if base else {}
            values.update(entry)
            for listed in ("algorithms", "jwks_hosts"):
                if isinstance(values.get(listed), list):
                    values[listed] = tuple(values[listed])
            try:
                by_iss[entry["issuer"]] = Issuer(**values)
            except TypeError as exc:
                msg = f"issuer {entry['issuer']!r}: {exc}"
                raise ConfigError(msg) from exc
        return cls(by_iss.values())

    @classmethod
    def load(cls, path: Path | None, *, disabled_providers: Iterable[str] = ()) -> IssuerRegistry:
        """The built-ins plus the file at ``path`` (if any); providers listed are switched off.

        Raises:
            ConfigError: the file is unreadable, not TOML, or has invalid entries.
        """
        entries: list[Mapping[str, Any]] = []
        if path is not None:
            try:
                doc = tomllib.loads(path.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                msg = f"issuers file {path}: {exc}"
                raise ConfigError(msg) from exc
            entries = list(doc.get("issuer", []))
        reg = cls.from_entries(entries)
        off = set(disabled_providers)
        bad = off - set(PROVIDERS)
        if bad:
            msg = f"unknown providers to disable: {', '.join(sorted(bad))}"
            raise ConfigError(msg)
        if off:
            reg = cls(dataclasses.replace(i, enabled=i.enabled and i.provider not in off) for i in reg)
        return reg
