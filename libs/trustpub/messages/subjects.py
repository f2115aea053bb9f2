"""NATS subject names, in one place.

The root (``trustpub`` by default) is configurable so that tests, and several
deployments sharing one NATS account, can isolate themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXCHANGE_ID_HEADER = "Trustpub-Exchange-Id"

_ROOT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True, slots=True)
class Subjects:
    """Every subject, stream and bucket name derived from one root."""

    root: str = "trustpub"

    def __post_init__(self) -> None:
        if not _ROOT.fullmatch(self.root):
            msg = f"subject root must be dot-separated tokens of [A-Za-z0-9_-], got {self.root!r}"
            raise ValueError(msg)

    @property
    def token_verify(self) -> str:
        return f"{self.root}.token.verify"

    @property
    def token_mint(self) -> str:
        return f"{self.root}.token.mint"

    @property
    def token_keys(self) -> str:
        return f"{self.root}.token.keys"

    @property
    def token_inspect(self) -> str:
        return f"{self.root}.token.inspect"

    @property
    def jwks_get(self) -> str:
        return f"{self.root}.jwks.get"

    @property
    def jwks_refresh(self) -> str:
        return f"{self.root}.jwks.refresh"

    @property
    def publisher_match(self) -> str:
        return f"{self.root}.publisher.match"

    @property
    def publisher_explain(self) -> str:
        """Dry run of ``publisher_match``: every rule of every candidate, nothing written."""
        return f"{self.root}.publisher.explain"

    @property
    def mint_revoke(self) -> str:
        return f"{self.root}.mint.revoke"

    @property
    def mint_status(self) -> str:
        return f"{self.root}.mint.status"

    def event(self, domain: str, fact: str) -> str:
        """``<root>.events.<domain>.<fact>``, e.g. ``trustpub.events.exchange.failed``."""
        return f"{self.root}.events.{domain}.{fact}"

    @property
    def events_wildcard(self) -> str:
        return f"{self.root}.events.>"

    @property
    def _name(self) -> str:
        return self.root.replace(".", "_")

    @property
    def events_stream(self) -> str:
        """JetStream stream holding every event."""
        return f"{self._name}_events".upper()

    @property
    def jwks_bucket(self) -> str:
        """JetStream key-value bucket holding the issuers' key sets."""
        return f"{self._name}_jwks"
