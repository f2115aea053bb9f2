"""The wire contract between trustpub's services: subjects, v1 message types, error codes.

Every service imports this package; nothing here does I/O.
"""

from trustpub.messages.errors import (
    ErrorCode,
    InternalError,
    InvalidPayload,
    InvalidPendingPublisher,
    InvalidPublisher,
    InvalidToken,
    NotEnabled,
    ReusedToken,
    TrustpubError,
    Unavailable,
)
from trustpub.messages.subjects import DEADLINE_HEADER, EXCHANGE_ID_HEADER, Subjects

__all__ = [
    "DEADLINE_HEADER",
    "EXCHANGE_ID_HEADER",
    "ErrorCode",
    "InternalError",
    "InvalidPayload",
    "InvalidPendingPublisher",
    "InvalidPublisher",
    "InvalidToken",
    "NotEnabled",
    "ReusedToken",
    "Subjects",
    "TrustpubError",
    "Unavailable",
]
