"""Seals: each hand-over that grants something carries its sender's MAC.

NATS permissions say who may publish where, but operators bring their own NATS and can get
its configuration wrong; so what the verifier verified, what the registry committed, what
the minter was asked to revoke, the gateway's refused exchanges and the jwks service's key
sets each carry an HMAC-SHA256 that the receiver checks before acting (DESIGN.md, "The bus is
a trust boundary"). A key ring belongs to one (sender, receiver) pair
(:func:`trustpub.messages.endpoints.seal_pairs`): its first key seals, every key in it checks,
so a key rotates by listing the new one first and dropping the old one later.

A message seal binds the subject, the reply subject (a captured request cannot be redirected
to another inbox), the exchange id, the deadline (its validity: at most
:data:`MAX_VALIDITY_S` ahead) and the payload bytes exactly as sent. An entry seal (a key set in
the bucket, an event) binds its key or subject and the bytes.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from trustpub.messages.endpoints import pair_name, pairs_of
from trustpub.messages.text import b64, unb64

SEAL_HEADER = "Trustpub-Seal"
# A sealed request is good until its deadline, and never longer than this after it was sent,
# whatever deadline a sender claims: a captured message is useless within a minute.
MAX_VALIDITY_S = 60.0
# Clocks of different pods differ a little; a deadline is honoured this much past its time.
CLOCK_SKEW_S = 2.0
KEY_BYTES = 32
_VERSION = "v1"
_DOMAIN = b"trustpub-seal/v1\x00"


class SealError(Exception):
    """A seal is missing, malformed, made with an unknown key, wrong, or expired.

    ``reason`` is a bounded metric label; the message says more, for the log.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class KeyRingError(Exception):
    """A key ring file is missing or unusable; the message says which and why."""


@dataclass(frozen=True)
class KeyRing:
    """The keys of one (sender, receiver) pair; the first seals."""

    name: str
    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyRingError(f"key ring {self.name} has no keys")

    @functools.cached_property
    def _by_kid(self) -> dict[str, bytes]:
        return dict(self.keys)

    def _mac(self, key: bytes, kid: str, parts: tuple[bytes | str, ...]) -> str:
        mac = hmac.new(key, _DOMAIN, hashlib.sha256)
        for part in (self.name, kid, *parts):
            raw = part.encode() if isinstance(part, str) else bytes(part)
            mac.update(len(raw).to_bytes(4, "big"))
            mac.update(raw)
        return b64(mac.digest()).decode("ascii")

    def seal(self, *parts: bytes | str) -> tuple[str, str]:
        """(key id, MAC) over ``parts`` with the first key."""
        kid, key = self.keys[0]
        return kid, self._mac(key, kid, parts)

    def check(self, kid: str, mac: str, *parts: bytes | str) -> None:
        """Raises:
        SealError: ``kid`` is not in the ring, or ``mac`` is not the MAC of ``parts``.
        """
        key = self._by_kid.get(kid)
        if key is None:
            raise SealError("unknown-key", f"key id {kid[:40]!r} is not in key ring {self.name}")
        if not hmac.compare_digest(self._mac(key, kid, parts), mac):
            raise SealError("bad-mac", f"the MAC does not match (key ring {self.name}, key {kid})")


def parse_ring(name: str, text: str) -> KeyRing:
    """A key ring file: one ``<key id> <base64url secret>`` per line, the sealing key first;
    blank lines and ``#`` comments are ignored.

    Raises:
        KeyRingError: a line does not parse, a secret is shorter than 32 bytes, or a key id
            repeats.
    """
    keys: list[tuple[str, bytes]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise KeyRingError(f"key ring {name}, line {number}: expected '<key id> <secret>'")
        kid, secret = fields
        try:
            # `trustpub bus init` writes base64url without padding; a secret an operator made
            # for a rotation (README, "The bus") may be encoded otherwise: its bytes count.
            key = unb64(secret, canonical=False)
        except ValueError:
            # Not chained: the cause of a failed decoding may hold the secret.
            raise KeyRingError(f"key ring {name}, line {number}: the secret is not base64url") from None
        if len(key) < KEY_BYTES:
            raise KeyRingError(
                f"key ring {name}, line {number}: the secret must be at least {KEY_BYTES} bytes"
            )
        if any(kid == k for k, _ in keys):
            raise KeyRingError(f"key ring {name}: key id {kid!r} appears twice")
        keys.append((kid, key))
    return KeyRing(name, tuple(keys))


def new_ring_line() -> str:
    """A fresh key, as a line of a key ring file."""
    return f"{secrets.token_hex(4)} {b64(secrets.token_bytes(KEY_BYTES)).decode('ascii')}\n"


def write_secret(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only; an existing file is left alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


@dataclass(frozen=True)
class Seals:
    """The key rings one service holds: those of the pairs it sends or receives in."""

    service: str
    rings: dict[tuple[str, str], KeyRing]

    @classmethod
    def load(cls, service: str, directory: Path | None) -> Seals:
        """Read ``<directory>/<sender>-<receiver>.keys`` for every pair ``service`` is in.

        Raises:
            KeyRingError: a ring this service needs is missing or unusable.
        """
        needed = pairs_of(service)
        if needed and directory is None:
            names = ", ".join(f"{pair_name(*p)}.keys" for p in needed)
            raise KeyRingError(
                f"the {service} service needs its seal keys ({names}): set TRUSTPUB_BUS_SECRETS_DIR"
            )
        rings: dict[tuple[str, str], KeyRing] = {}
        for pair in needed:
            name = pair_name(*pair)
            path = (directory or Path()) / f"{name}.keys"
            try:
                text = path.read_text()
            except OSError as exc:
                raise KeyRingError(f"seal key ring {path} is unreadable: {exc.strerror}") from None
            rings[pair] = parse_ring(name, text)
        return cls(service, rings)

    def ring(self, sender: str, receiver: str) -> KeyRing:
        """Raises:
        SealError: this service holds no keys for that pair.
        """
        ring = self.rings.get((sender, receiver))
        if ring is None:
            raise SealError("unknown-sender", f"no seal keys for {sender} -> {receiver}")
        return ring

    # -- requests: the seal travels in a header --------------------------------------------

    def seal_message(  # noqa: PLR0913  (everything the MAC binds)
        self, receiver: str, *, subject: str, reply: str, exchange_id: str, deadline: str, data: bytes
    ) -> str:
        """The value of the :data:`SEAL_HEADER` header: ``v1 <sender> <kid> <mac>``."""
        kid, mac = self.ring(self.service, receiver).seal(subject, reply, exchange_id, deadline, data)
        return f"{_VERSION} {self.service} {kid} {mac}"

    def check_message(  # noqa: PLR0913  (everything the MAC binds)
        self,
        header: str | None,
        *,
        allowed: tuple[str, ...],
        subject: str,
        reply: str,
        exchange_id: str,
        deadline: str,
        data: bytes,
        now: float,
    ) -> str:
        """The sender, if ``header`` is the seal of one of ``allowed`` over this message and
        the deadline has not passed.

        Raises:
            SealError: missing, malformed, a sender that may not send this, a wrong MAC, or
                a deadline that passed or lies too far ahead.
        """
        sender, kid, mac = _fields(header, allowed)
        self.ring(sender, self.service).check(kid, mac, subject, reply, exchange_id, deadline, data)
        try:
            at = float(deadline)
        except ValueError:
            raise SealError("malformed", "the deadline does not parse") from None
        if now > at + CLOCK_SKEW_S:
            raise SealError("expired", f"the deadline passed {now - at:.1f} s ago")
        if at > now + MAX_VALIDITY_S + CLOCK_SKEW_S:
            raise SealError("expired", "the deadline lies too far ahead")
        return sender

    # -- entries: key sets in the bucket, events in the stream ------------------------------

    def seal_entry(self, receiver: str, key: str, data: bytes) -> tuple[str, str]:
        """(key id, MAC) over an entry stored under ``key`` (a bucket key or a subject)."""
        return self.ring(self.service, receiver).seal(key, data)

    def check_entry(  # noqa: PLR0913  (the seal and everything it binds)
        self, sender: str, kid: str, mac: str, key: str, data: bytes, *, receiver: str = ""
    ) -> None:
        """Check an entry sealed by ``sender`` for ``receiver`` (default: this service; a
        writer reading back its own entries names their reader).

        Raises:
            SealError: unknown key or wrong MAC.
        """
        self.ring(sender, receiver or self.service).check(kid, mac, key, data)

    def entry_header(self, receiver: str, key: str, data: bytes) -> str:
        """An entry seal as a header value (events): ``v1 <sender> <kid> <mac>``."""
        kid, mac = self.seal_entry(receiver, key, data)
        return f"{_VERSION} {self.service} {kid} {mac}"

    def check_entry_header(
        self, header: str | None, *, allowed: tuple[str, ...], key: str, data: bytes
    ) -> str:
        """The sender of an entry sealed with :meth:`entry_header`.

        Raises:
            SealError: missing, malformed, a sender that may not send it, or a wrong MAC.
        """
        sender, kid, mac = _fields(header, allowed)
        self.check_entry(sender, kid, mac, key, data)
        return sender


def _fields(header: str | None, allowed: tuple[str, ...]) -> tuple[str, str, str]:
    """(sender, key id, MAC) of a seal header ``v1 <sender> <kid> <mac>``.

    Raises:
        SealError: missing, malformed, or naming a sender not in ``allowed``.
    """
    if not header:
        raise SealError("unsealed", "the message carries no seal")
    fields = header.split(" ")
    if len(fields) != 4 or fields[0] != _VERSION:
        raise SealError("malformed", "the seal does not parse")
    _, sender, kid, mac = fields
    if sender not in allowed:
        raise SealError("sender-not-allowed", f"{sender[:40]!r} may not send this")
    return sender, kid, mac
