"""Version 1 of the messages the services exchange over NATS.

Each message is a frozen, keyword-only msgspec Struct tagged with its ``type``
(``trustpub.<domain>.v1.<name>``). Readers ignore fields they do not know, and every field
added later gets a default, so an old reader and a new writer understand each other.
A reply is either the endpoint's reply type or an :class:`ErrorReply`.
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class ErrorReply(_Msg, tag="trustpub.v1.error"):
    """The one error envelope of every endpoint."""

    code: str
    description: str


# --- verifier ---------------------------------------------------------------------------


class VerifyRequest(_Msg, tag="trustpub.token.v1.verify_request"):
    token: str


class VerifiedToken(_Msg, tag="trustpub.token.v1.verify_reply"):
    """A token whose signature, issuer, audience and times were verified."""

    issuer: str
    provider: str
    claims: dict[str, Any]
    # The replay key: the token's ``jti``, or ``sha256:<hex>`` of its signing input for
    # issuers whose tokens carry none (Google).
    token_key: str
    expires_at: int
    # SHA-256 of the raw token, hex; the audit keeps a prefix of it, never the token.
    token_hash: str


# --- registry ---------------------------------------------------------------------------


class MatchRequest(_Msg, tag="trustpub.publisher.v1.match_request"):
    """Find the publisher for verified claims, claim the token id, record the mint."""

    exchange_id: str
    token: VerifiedToken


class MintGrant(_Msg, tag="trustpub.publisher.v1.match_reply"):
    """A committed mint record: what the minter is to sign."""

    mint_id: str
    publisher_id: str
    projects: list[str]
    issued_at: int
    expires_at: int
    provenance: dict[str, str] = {}


class RevokeRequest(_Msg, tag="trustpub.mint.v1.revoke_request"):
    mint_id: str
    reason: str = "burned"


class MintStatusRequest(_Msg, tag="trustpub.mint.v1.status_request"):
    mint_id: str


class MintStatus(_Msg, tag="trustpub.mint.v1.status_reply"):
    mint_id: str
    known: bool
    revoked: bool = False
    expires_at: int = 0


# --- minter -----------------------------------------------------------------------------


class MintRequest(_Msg, tag="trustpub.token.v1.mint_request"):
    grant: MintGrant


class MintedToken(_Msg, tag="trustpub.token.v1.mint_reply"):
    token: str
    expires: int


class KeysRequest(_Msg, tag="trustpub.token.v1.keys_request"):
    pass


class KeysReply(_Msg, tag="trustpub.token.v1.keys_reply"):
    """The minter's public keys as a JWK Set document."""

    jwks: dict[str, Any]


class InspectRequest(_Msg, tag="trustpub.token.v1.inspect_request"):
    token: str


class InspectReply(_Msg, tag="trustpub.token.v1.inspect_reply"):
    """A minted token whose signature checked out; ``claims`` as signed."""

    claims: dict[str, Any]


# --- jwks -------------------------------------------------------------------------------


class KeySetRequest(_Msg, tag="trustpub.jwks.v1.get_request"):
    issuer: str


class RefreshRequest(_Msg, tag="trustpub.jwks.v1.refresh_request"):
    """Ask for a refresh because a token named a key id that is not in the cached set."""

    issuer: str
    kid: str = ""


class KeySet(_Msg, tag="trustpub.jwks.v1.key_set"):
    """An issuer's verified public keys, as stored in the key-value bucket."""

    issuer: str
    keys: list[dict[str, Any]]
    fetched_at: float
    # The last time a fetch was attempted, whatever its result.
    checked_at: float = 0.0


# --- events -----------------------------------------------------------------------------


class ExchangeEvent(_Msg, tag="trustpub.events.v1.exchange"):
    """``<root>.events.exchange.succeeded|failed``: one per exchange, for the audit."""

    event_id: str
    exchange_id: str
    at: float
    outcome: str
    code: str = ""
    description: str = ""
    issuer: str = ""
    provider: str = ""
    token_hash_prefix: str = ""
    publisher_id: str = ""
    mint_id: str = ""


Reply = (
    VerifiedToken
    | MintGrant
    | MintStatus
    | MintedToken
    | KeysReply
    | InspectReply
    | KeySet
    | ErrorReply
)

encoder = msgspec.json.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    """Serialise a message to JSON bytes."""
    return encoder.encode(msg)
