"""Names on the bus derived from the deployment's root: events, the events stream, buckets.

The root (``trustpub`` by default) is configurable so that tests, and several
deployments sharing one NATS account, can isolate themselves. Request subjects are declared
with their endpoints (:mod:`trustpub.messages.endpoints`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXCHANGE_ID_HEADER = "Trustpub-Exchange-Id"
# The exchange's deadline, unix seconds: every stage stops working for a caller that gave up.
DEADLINE_HEADER = "Trustpub-Deadline"

_ROOT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True, slots=True)
class Subjects:
    """Every subject, stream and bucket name derived from one root."""

    root: str = "trustpub"

    def __post_init__(self) -> None:
        if not _ROOT.fullmatch(self.root):
            msg = f"subject root must be dot-separated tokens of [A-Za-z0-9_-], got {self.root!r}"
            raise ValueError(msg)

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

    def bucket(self, suffix: str) -> str:
        """A JetStream key-value bucket: ``<root>_<suffix>``."""
        return f"{self._name}_{suffix}"

    @property
    def jwks_bucket(self) -> str:
        """JetStream key-value bucket holding the issuers' key sets."""
        return self.bucket("jwks")

    def durable(self, name: str) -> str:
        """A durable consumer's name: ``<root>_<name>``."""
        return f"{self._name}_{name}"
