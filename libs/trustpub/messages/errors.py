"""Error codes shared by every service and by the HTTP API.

The codes are PyPI's (warehouse/oidc/views.py), plus ``unavailable`` (HTTP 503) for a
dependency that did not answer in time and ``internal-error`` for a bug, which the gateway
also reports as 503 so that a client retries with a fresh token rather than giving up.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """The ``code`` of an error object in an HTTP error body or an error reply."""

    INVALID_PAYLOAD = "invalid-payload"
    NOT_ENABLED = "not-enabled"
    INVALID_TOKEN = "invalid-token"
    INVALID_PENDING_PUBLISHER = "invalid-pending-publisher"
    INVALID_REUSE_TOKEN = "invalid-reuse-token"
    INVALID_PUBLISHER = "invalid-publisher"
    UNAVAILABLE = "unavailable"
    INTERNAL_ERROR = "internal-error"


class TrustpubError(Exception):
    """Base of every error that trustpub reports to a caller.

    ``description`` is shown to the publisher as is: it says what was expected and what
    the token carried, and never contains a raw token.
    """

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description
        # Facts about the refused request for the audit record, never shown to the client:
        # e.g. {"issuer": ..., "provider": ...} once the verifier knows whose token it was.
        self.context: dict[str, str] = {}

    @classmethod
    def from_code(cls, code: str, description: str, context: dict[str, str] | None = None) -> TrustpubError:
        """Rebuild the error a remote service replied with; an unknown code is internal."""
        error: TrustpubError = InternalError(description)
        for sub in _ALL:
            if sub.code == code:
                error = sub(description)
                break
        error.context.update(context or {})
        return error


class InvalidPayload(TrustpubError):
    """The request body, or the JWT's outer form, is not what the endpoint takes."""

    code = ErrorCode.INVALID_PAYLOAD


class NotEnabled(TrustpubError):
    """Trusted Publishing is switched off, globally or for the token's provider."""

    code = ErrorCode.NOT_ENABLED


class InvalidToken(TrustpubError):
    """The token failed verification: signature, issuer, audience, time or type."""

    code = ErrorCode.INVALID_TOKEN


class InvalidPendingPublisher(TrustpubError):
    """A pending publisher matched, but its project exists already."""

    code = ErrorCode.INVALID_PENDING_PUBLISHER


class ReusedToken(TrustpubError):
    """The token's id was already exchanged once."""

    code = ErrorCode.INVALID_REUSE_TOKEN


class InvalidPublisher(TrustpubError):
    """The token is valid, but no registered publisher accepts its claims."""

    code = ErrorCode.INVALID_PUBLISHER


class Unavailable(TrustpubError):
    """A dependency (a service, the database, an issuer's keys) did not answer in time."""

    code = ErrorCode.UNAVAILABLE


class InternalError(TrustpubError):
    """A bug; details are in the service's log, never in the reply."""

    code = ErrorCode.INTERNAL_ERROR


_ALL: tuple[type[TrustpubError], ...] = (
    InvalidPayload,
    NotEnabled,
    InvalidToken,
    InvalidPendingPublisher,
    ReusedToken,
    InvalidPublisher,
    Unavailable,
    InternalError,
)
