"""Every conversation on the bus, declared once.

An :class:`Endpoint` says what travels (request and reply types), which service serves it,
which services may call it, where its result goes next (the exchange is a pipeline: each
stage hands its result to the next, and the last answers the first caller's inbox), and
whether each request carries its sender's seal. An :class:`Event` says who may publish it and
who consumes it; :data:`KEYSETS` does the same for the key-set bucket.

The runtime serves and calls only through these declarations, and the NATS authorization is
generated from them (:mod:`trustpub.messages.authorization`), so the code and the permissions
cannot drift apart. Nothing here does I/O.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from trustpub.messages import v1

GATEWAY = "gateway"
JWKS = "jwks"
VERIFIER = "verifier"
REGISTRY = "registry"
MINTER = "minter"
GATE = "gate"
# Every identity on the bus: one NATS user, one inbox prefix, one seed each.
SERVICES = (GATEWAY, JWKS, VERIFIER, REGISTRY, MINTER, GATE)

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep", bound=msgspec.Struct)
T = TypeVar("T", bound=msgspec.Struct)


@dataclass(frozen=True, eq=False)
class Endpoint(Generic[Req, Rep]):
    """One request subject: ``<root>.<name>``, served in the queue group ``<root>.<server>``.

    ``reply`` is what the pipeline's first caller finally receives (or an ``ErrorReply`` from
    whichever stage refused). A stage with ``forwards_to`` hands its result to that endpoint
    with the caller's inbox as the reply subject, instead of answering itself. ``sealed``:
    every request carries a MAC of its sender, keyed per (sender, receiver) pair, which the
    server checks before acting, whatever the bus let through. ``sealed_reply``: the answer
    carries the server's MAC, which the caller checks before it believes it (an answer that
    decides something, such as whether an upload token is still active).
    """

    name: str
    request: type[Req]
    reply: type[Rep]
    server: str
    callers: tuple[str, ...]
    forwards_to: Endpoint[Any, Rep] | None = None
    sealed: bool = False
    sealed_reply: bool = False

    def subject(self, root: str) -> str:
        return f"{root}.{self.name}"

    def queue(self, root: str) -> str:
        return f"{root}.{self.server}"

    @property
    def label(self) -> str:
        """A bounded metric label: the subject without the deployment's root."""
        return self.name

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r})"


@dataclass(frozen=True, eq=False)
class Event(Generic[T]):
    """``<root>.events.<domain>.<fact>``, stored in the events stream.

    Only ``publishers`` may publish it. A sealed event carries its publisher's MAC, which the
    consumer checks (an event becomes an audit row: who wrote it matters as much as what).
    """

    domain: str
    fact: str
    type: type[T]
    publishers: tuple[str, ...]
    consumers: tuple[str, ...] = ()
    sealed: bool = False
    # The durable pull consumer's name below the root, for events a service consumes.
    durable: str = ""

    def subject(self, root: str) -> str:
        return f"{root}.events.{self.domain}.{self.fact}"

    def __repr__(self) -> str:
        return f"Event({self.domain}.{self.fact})"


@dataclass(frozen=True, eq=False)
class Bucket:
    """A JetStream key-value bucket: one writer, read-only readers, every entry sealed by the
    writer for each reader (unless ``sealed`` is false: a bucket its writer alone reads)."""

    suffix: str
    writer: str
    readers: tuple[str, ...]
    sealed: bool = True

    def __repr__(self) -> str:
        return f"Bucket({self.suffix})"


# --- the exchange: gateway -> verifier -> registry -> minter -> gateway ------------------------

TOKEN_MINT: Endpoint[v1.MintRequest, v1.MintedToken] = Endpoint(
    "token.mint", v1.MintRequest, v1.MintedToken, server=MINTER, callers=(REGISTRY,), sealed=True
)
PUBLISHER_MATCH: Endpoint[v1.MatchRequest, v1.MintedToken] = Endpoint(
    "publisher.match",
    v1.MatchRequest,
    v1.MintedToken,
    server=REGISTRY,
    callers=(VERIFIER,),
    forwards_to=TOKEN_MINT,
    sealed=True,
)
TOKEN_VERIFY: Endpoint[v1.VerifyRequest, v1.MintedToken] = Endpoint(
    "token.verify",
    v1.VerifyRequest,
    v1.MintedToken,
    server=VERIFIER,
    callers=(GATEWAY,),
    forwards_to=PUBLISHER_MATCH,
)

# --- explain: the same verification, then a read-only judgement --------------------------------

PUBLISHER_EXPLAIN: Endpoint[v1.ExplainRequest, v1.ExplainReply] = Endpoint(
    "publisher.explain", v1.ExplainRequest, v1.ExplainReply, server=REGISTRY, callers=(VERIFIER,), sealed=True
)
TOKEN_EXPLAIN: Endpoint[v1.VerifyRequest, v1.ExplainReply] = Endpoint(
    "token.explain",
    v1.VerifyRequest,
    v1.ExplainReply,
    server=VERIFIER,
    callers=(GATEWAY,),
    forwards_to=PUBLISHER_EXPLAIN,
)

# --- upload tokens after the exchange ----------------------------------------------------------

MINT_REVOKE: Endpoint[v1.RevokeRequest, v1.MintStatus] = Endpoint(
    "mint.revoke", v1.RevokeRequest, v1.MintStatus, server=REGISTRY, callers=(MINTER,), sealed=True
)
# burn-token: the minter checks the upload token's signature, then asks the registry to revoke
# its mint record: holding the gateway's credentials is not enough to revoke someone's token.
TOKEN_BURN: Endpoint[v1.BurnRequest, v1.MintStatus] = Endpoint(
    "token.burn", v1.BurnRequest, v1.MintStatus, server=MINTER, callers=(GATEWAY,), forwards_to=MINT_REVOKE
)
# Introspection and the upload gate believe this answer ("known, not revoked"): it carries the
# registry's seal.
MINT_STATUS: Endpoint[v1.MintStatusRequest, v1.MintStatus] = Endpoint(
    "mint.status",
    v1.MintStatusRequest,
    v1.MintStatus,
    server=REGISTRY,
    callers=(GATEWAY, GATE),
    sealed_reply=True,
)
# The minter's public keys; the gateway and the gate keep only the key ids they are configured with.
TOKEN_KEYS: Endpoint[v1.KeysRequest, v1.KeysReply] = Endpoint(
    "token.keys", v1.KeysRequest, v1.KeysReply, server=MINTER, callers=(GATEWAY, GATE)
)

# --- uploads through the gate, and their provenance ----------------------------------------------

# An upload the index accepted: only the gate may record one (sealed), and the registry takes the
# provenance from the mint record, never from the request.
UPLOAD_RECORD: Endpoint[v1.UploadRecordRequest, v1.UploadRecord] = Endpoint(
    "upload.record", v1.UploadRecordRequest, v1.UploadRecord, server=REGISTRY, callers=(GATE,), sealed=True
)
# The minter signs only a record the registry read from its table (sealed): a provenance statement.
PROVENANCE_SIGN: Endpoint[v1.ProvenanceSignRequest, v1.ProvenanceReply] = Endpoint(
    "provenance.sign",
    v1.ProvenanceSignRequest,
    v1.ProvenanceReply,
    server=MINTER,
    callers=(REGISTRY,),
    sealed=True,
)
# GET /_/provenance/<project>/<file>: the registry finds the record, the minter signs it and
# answers the gate (or the registry answers "not found" itself).
UPLOAD_PROVENANCE: Endpoint[v1.ProvenanceRequest, v1.ProvenanceReply] = Endpoint(
    "upload.provenance",
    v1.ProvenanceRequest,
    v1.ProvenanceReply,
    server=REGISTRY,
    callers=(GATE,),
    forwards_to=PROVENANCE_SIGN,
)

# --- the admin API ---------------------------------------------------------------------------

# Every call of the admin API: the gateway's admin listener hands it over sealed, the registry
# checks the API token's hash, expiry and scope, acts and audits (DESIGN.md, "The admin API").
ADMIN_CALL: Endpoint[v1.AdminRequest, v1.AdminReply] = Endpoint(
    "admin.call", v1.AdminRequest, v1.AdminReply, server=REGISTRY, callers=(GATEWAY,), sealed=True
)

# --- identity providers' keys --------------------------------------------------------------------

# The reply is the sealed entry exactly as stored in the bucket: verifiers check it the same way.
JWKS_REFRESH: Endpoint[v1.RefreshRequest, v1.SealedKeySet] = Endpoint(
    "jwks.refresh", v1.RefreshRequest, v1.SealedKeySet, server=JWKS, callers=(VERIFIER,)
)

ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    TOKEN_VERIFY,
    PUBLISHER_MATCH,
    TOKEN_MINT,
    TOKEN_EXPLAIN,
    PUBLISHER_EXPLAIN,
    TOKEN_BURN,
    MINT_REVOKE,
    MINT_STATUS,
    TOKEN_KEYS,
    JWKS_REFRESH,
    UPLOAD_RECORD,
    UPLOAD_PROVENANCE,
    PROVENANCE_SIGN,
    ADMIN_CALL,
)

# --- events --------------------------------------------------------------------------------------

# Batched: every successful exchange of up to a fraction of a second in one message.
# A delivered exchange: the registry marks its mint record delivered (single use from then on)
# and writes its audit row (DESIGN.md, "Exactly once, as the publisher sees it").
EXCHANGE_SUCCEEDED: Event[v1.ExchangeEvents] = Event(
    "exchange",
    "succeeded",
    v1.ExchangeEvents,
    publishers=(GATEWAY,),
    consumers=(REGISTRY,),
    sealed=True,
    durable="registry_delivery",
)
# An exchange answered with a refusal: its audit row, and the release of a mint record granted
# to it, if any, that it did not deliver.
EXCHANGE_FAILED: Event[v1.ExchangeEvent] = Event(
    "exchange",
    "failed",
    v1.ExchangeEvent,
    publishers=(GATEWAY,),
    consumers=(REGISTRY,),
    sealed=True,
    durable="registry_audit",
)
JWKS_ROTATED: Event[v1.KeySetRotated] = Event("jwks", "rotated", v1.KeySetRotated, publishers=(JWKS,))
# An upload the index accepted and the registry recorded, for whoever follows the stream.
UPLOAD_ACCEPTED: Event[v1.UploadEvent] = Event("upload", "accepted", v1.UploadEvent, publishers=(GATE,))
# An upload the gate refused (or the index did): its audit row, as for a refused exchange.
UPLOAD_REFUSED: Event[v1.UploadEvent] = Event(
    "upload",
    "refused",
    v1.UploadEvent,
    publishers=(GATE,),
    consumers=(REGISTRY,),
    sealed=True,
    durable="registry_uploads",
)

EVENTS: tuple[Event[Any], ...] = (
    EXCHANGE_SUCCEEDED,
    EXCHANGE_FAILED,
    JWKS_ROTATED,
    UPLOAD_ACCEPTED,
    UPLOAD_REFUSED,
)

# --- the key-set bucket --------------------------------------------------------------------------

KEYSETS = Bucket("jwks", writer=JWKS, readers=(VERIFIER,))
# Clients' shared rate-limit levels: every gateway replica writes and watches it. Not sealed:
# written and read by the gateway alone (DESIGN.md, "The rate limit across replicas").
RATE_LIMITS = Bucket("ratelimit", writer=GATEWAY, readers=(GATEWAY,), sealed=False)
BUCKETS = (KEYSETS, RATE_LIMITS)


@functools.cache
def reply_origins(endpoint: Endpoint[Any, Any]) -> tuple[str, ...]:
    """The services whose inbox a reply of ``endpoint`` may go to: its callers, or for a stage
    that others forward to, the first callers of the pipeline (the declarations never change:
    computed once per endpoint)."""
    upstream = [e for e in ENDPOINTS if e.forwards_to is endpoint]
    if not upstream:
        return endpoint.callers
    return tuple(sorted({o for e in upstream for o in reply_origins(e)}))


def seal_pairs() -> tuple[tuple[str, str], ...]:
    """Every (sender, receiver) pair that seals what it sends: one key ring each."""
    pairs: set[tuple[str, str]] = set()
    for endpoint in ENDPOINTS:
        if endpoint.sealed:
            pairs.update((caller, endpoint.server) for caller in endpoint.callers)
        if endpoint.sealed_reply:
            pairs.update((endpoint.server, origin) for origin in reply_origins(endpoint))
    for event in EVENTS:
        if event.sealed:
            pairs.update((p, c) for p in event.publishers for c in event.consumers)
    for bucket in BUCKETS:
        if bucket.sealed:
            pairs.update((bucket.writer, r) for r in bucket.readers)
    return tuple(sorted(pairs))


def pair_name(sender: str, receiver: str) -> str:
    """The name of a key ring: ``<sender>-<receiver>`` (its file is ``<name>.keys``)."""
    return f"{sender}-{receiver}"


def pairs_of(service: str) -> tuple[tuple[str, str], ...]:
    """The seal pairs ``service`` takes part in, as sender or receiver."""
    return tuple(p for p in seal_pairs() if service in p)


def served_by(service: str) -> tuple[Endpoint[Any, Any], ...]:
    return tuple(e for e in ENDPOINTS if e.server == service)


def inbox_prefix(root: str, service: str) -> str:
    """The private inbox prefix of ``service``: only it may subscribe below it."""
    return f"_INBOX.{root}.{service}"
