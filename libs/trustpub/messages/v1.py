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


class ErrorReply(_Msg, frozen=True, tag="trustpub.v1.error"):
    """The one error envelope of every endpoint."""

    code: str
    description: str
    # For the audit record of a refusal (e.g. the issuer and provider of a refused token).
    context: dict[str, str] = {}


# --- verifier ---------------------------------------------------------------------------


class VerifyRequest(_Msg, frozen=True, tag="trustpub.token.v1.verify_request"):
    token: str


class VerifiedToken(_Msg, frozen=True, tag="trustpub.token.v1.verify_reply"):
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


class MatchRequest(_Msg, frozen=True, tag="trustpub.publisher.v1.match_request"):
    """Find the publisher for verified claims, claim the token id, record the mint."""

    exchange_id: str
    token: VerifiedToken


class MintGrant(_Msg, frozen=True, tag="trustpub.publisher.v1.match_reply"):
    """A committed mint record: what the minter is to sign."""

    mint_id: str
    publisher_id: str
    projects: list[str]
    issued_at: int
    expires_at: int
    provenance: dict[str, str] = {}
    # Whose token was exchanged, for the gateway's record of the exchange.
    issuer: str = ""
    provider: str = ""


class ExplainRequest(_Msg, frozen=True, tag="trustpub.publisher.v1.explain_request"):
    """Judge verified claims against every candidate publisher; claim and write nothing."""

    exchange_id: str
    token: VerifiedToken


class ExplainRule(_Msg, frozen=True, tag="trustpub.publisher.v1.explain_rule"):
    """One rule of one candidate: what was expected, what the token carried, and why."""

    rule: str
    ok: bool
    expected: str
    actual: str
    description: str


class ExplainCandidate(_Msg, frozen=True, tag="trustpub.publisher.v1.explain_candidate"):
    """A publisher (or pending publisher) registered for the token's own identity."""

    publisher_id: str
    pending: bool
    # The projects a token minted through it covers; for a pending one, the project it
    # would create (``pending_project``) and when it expires (unix seconds).
    projects: list[str]
    passed: bool
    chosen: bool
    specificity: int
    rules: list[ExplainRule]
    pending_project: str = ""
    expires_at: int = 0
    # Ids this exchange would pin (field -> claim value).
    pins: dict[str, str] = {}
    # Seconds the minted token would live.
    token_lifetime: int = 0
    # A publisher of the identity that the token was not meant for: only which rules differ.
    withheld: bool = False


class ExplainReply(_Msg, frozen=True, tag="trustpub.publisher.v1.explain_reply"):
    """What ``publisher.match`` would decide for the token, and why, rule by rule.

    ``outcome`` is "would-mint", "would-create-project" or "refused"; when refused, ``code``
    and ``description`` are what the exchange would answer.
    """

    issuer: str
    provider: str
    identity: str
    outcome: str
    description: str
    candidates: list[ExplainCandidate]
    code: str = ""
    # The token's id was exchanged before (explain never claims it).
    token_used: bool = False
    publisher_id: str = ""


class RevokeRequest(_Msg, frozen=True, tag="trustpub.mint.v1.revoke_request"):
    mint_id: str
    reason: str = "burned"


class MintStatusRequest(_Msg, frozen=True, tag="trustpub.mint.v1.status_request"):
    mint_id: str


class MintStatus(_Msg, frozen=True, tag="trustpub.mint.v1.status_reply"):
    """A mint record as committed: introspection compares an upload token's claims with it."""

    mint_id: str
    known: bool
    revoked: bool = False
    expires_at: int = 0
    publisher_id: str = ""
    projects: list[str] = []


# --- minter -----------------------------------------------------------------------------


class MintRequest(_Msg, frozen=True, tag="trustpub.token.v1.mint_request"):
    grant: MintGrant


class MintedToken(_Msg, frozen=True, tag="trustpub.token.v1.mint_reply"):
    """The exchange's answer: the upload token, and the grant it was signed for."""

    token: str
    expires: int
    mint_id: str = ""
    publisher_id: str = ""
    projects: list[str] = []
    issuer: str = ""
    provider: str = ""


class BurnRequest(_Msg, frozen=True, tag="trustpub.token.v1.burn_request"):
    """Revoke an upload token early: the token itself, which the minter checks."""

    token: str


class KeysRequest(_Msg, frozen=True, tag="trustpub.token.v1.keys_request"):
    pass


class KeysReply(_Msg, frozen=True, tag="trustpub.token.v1.keys_reply"):
    """The minter's public keys as a JWK Set document."""

    jwks: dict[str, Any]


# --- uploads through the gate -----------------------------------------------------------


class UploadRecordRequest(_Msg, frozen=True, tag="trustpub.upload.v1.record_request"):
    """An upload the index accepted, as the gate saw it pass: record it (sealed by the gate).

    ``upload_id`` makes a retry idempotent; ``project`` is the distribution's name as uploaded.
    The provenance is not here: the registry copies it from the mint record.
    """

    upload_id: str
    mint_id: str
    project: str
    version: str
    filename: str
    sha256: str
    size: int
    token_hash_prefix: str = ""


class UploadRecord(_Msg, frozen=True, tag="trustpub.upload.v1.record"):
    """An upload as recorded: what a provenance statement says."""

    upload_id: str
    project: str  # PEP 503-normalized
    version: str
    filename: str
    sha256: str
    size: int
    uploaded_at: int
    mint_id: str
    publisher_id: str
    provenance: dict[str, str] = {}


class ProvenanceRequest(_Msg, frozen=True, tag="trustpub.upload.v1.provenance_request"):
    """The provenance of the latest upload of ``filename`` to ``project``."""

    project: str
    filename: str


class ProvenanceSignRequest(_Msg, frozen=True, tag="trustpub.upload.v1.provenance_sign_request"):
    """A record the registry read from its table, for the minter to sign (sealed)."""

    record: UploadRecord


class ProvenanceReply(_Msg, frozen=True, tag="trustpub.upload.v1.provenance_reply"):
    """The signed statement (a compact JWS), or ``found`` false: the gate saw no such upload."""

    found: bool
    jws: str = ""


# --- the admin API -------------------------------------------------------------------------


class AdminRequest(_Msg, frozen=True, tag="trustpub.admin.v1.request"):
    """One call of the admin API as the gateway's admin listener received it (sealed by the
    gateway): the registry checks the API token and its scope, then acts (DESIGN.md, "The
    admin API"). ``path`` is below the API's prefix; ``body`` is the raw JSON text."""

    token: str
    method: str
    path: str
    query: dict[str, str] = {}
    body: str = ""


class AdminReply(_Msg, frozen=True, tag="trustpub.admin.v1.reply"):
    """The HTTP status and JSON body the admin listener answers with."""

    status: int
    body: str
    headers: dict[str, str] = {}


# --- jwks -------------------------------------------------------------------------------


class RefreshRequest(_Msg, frozen=True, tag="trustpub.jwks.v1.refresh_request"):
    """Ask for a refresh because a token named a key id that is not in the cached set."""

    issuer: str
    kid: str = ""


class KeySet(_Msg, frozen=True, tag="trustpub.jwks.v1.key_set"):
    """An issuer's verified public keys, as stored in the key-value bucket."""

    issuer: str
    keys: list[dict[str, Any]]
    fetched_at: float
    # The last time a fetch was attempted, whatever its result.
    checked_at: float = 0.0
    # Why the last finished fetch failed; empty when it succeeded. A verifier that does not
    # find a kid answers unavailable rather than invalid-token while this is set.
    last_error: str = ""
    # Non-zero while a jwks replica is fetching (the time it claimed the fetch): the other
    # replicas wait for its result instead of fetching too.
    pending_since: float = 0.0


class SealedKeySet(_Msg, frozen=True, tag="trustpub.jwks.v1.sealed_key_set"):
    """A :class:`KeySet` as the jwks service stores it in the bucket and answers a refresh:
    its JSON exactly as sealed (``body``), the key id of the seal and the MAC. Readers check
    the MAC before they decode ``body``."""

    kid: str
    mac: str
    body: msgspec.Raw


# --- events -----------------------------------------------------------------------------


class ExchangeEvent(_Msg, frozen=True, tag="trustpub.events.v1.exchange"):
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


class ExchangeEvents(_Msg, frozen=True, tag="trustpub.events.v1.exchanges"):
    """``<root>.events.exchange.succeeded``: the delivered exchanges of a short while, in one
    message; the registry marks each one's mint record delivered and writes its audit row (one
    JetStream publish per exchange cost about a sixth of the exchange's CPU: DESIGN.md,
    "Performance")."""

    events: list[ExchangeEvent]


class KeySetRotated(_Msg, frozen=True, tag="trustpub.events.v1.jwks_rotated"):
    """``<root>.events.jwks.rotated``: an issuer's key set changed (published by jwks)."""

    event_id: str
    at: float
    issuer: str
    old_kids: list[str]
    new_kids: list[str]
    # Kids present before and after whose key material changed (should never happen).
    replaced_kids: list[str] = []


class UploadEvent(_Msg, frozen=True, tag="trustpub.events.v1.upload"):
    """``<root>.events.upload.accepted|refused``: one per upload the gate answered.

    A refusal (``code``: what the gate refused it for, or ``index-refused``) carries what the
    gate knew by then; an accepted upload the whole record.
    """

    event_id: str
    at: float
    outcome: str
    status: int
    code: str = ""
    description: str = ""
    project: str = ""
    version: str = ""
    filename: str = ""
    sha256: str = ""
    size: int = 0
    mint_id: str = ""
    publisher_id: str = ""
    token_hash_prefix: str = ""
    provenance: dict[str, str] = {}


Reply = (
    MintStatus
    | MintedToken
    | KeysReply
    | SealedKeySet
    | ExplainReply
    | UploadRecord
    | ProvenanceReply
    | ErrorReply
)

encoder = msgspec.json.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    """Serialise a message to JSON bytes."""
    return encoder.encode(msg)
