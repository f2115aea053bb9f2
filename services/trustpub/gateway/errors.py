"""The HTTP error shape, PyPI's: ``{"message": ..., "errors": [{"code", "description"}]}``.

``errors`` is never missing: twine and gh-action-pypi-publish index into it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus

import orjson
import structlog
from aiohttp import web

from trustpub.messages import ErrorCode, InvalidPayload, TrustpubError
from trustpub.runtime import new_exchange_id

TOKEN_REQUEST_FAILED = "Token request failed"
# On every exchange answer; quoted in support requests: the same id is in every service's
# log lines for that exchange and in its audit record.
EXCHANGE_ID_RESPONSE_HEADER = "X-Trustpub-Exchange-Id"
# Each request's exchange id (given by :func:`exchange_ids`, bound to its log lines).
EXCHANGE_ID = web.RequestKey("exchange_id", str)

# The one map between errors and HTTP statuses. A TrustpubError's status by its code: PyPI
# answers every refused exchange with 422; a dependency outage is ours to report as 503 (never
# 500) so that clients know to retry with a fresh token.
_STATUS = {ErrorCode.UNAVAILABLE: 503, ErrorCode.INTERNAL_ERROR: 503}
RATE_LIMITED = "rate-limited"
# The code of an answer given by status alone (aiohttp's own 404/405/413, the rate limit, a
# switched-off route or service); any other 4xx is "invalid-request".
_HTTP_CODES = {
    403: ErrorCode.NOT_ENABLED.value,
    404: "not-found",
    405: "method-not-allowed",
    413: ErrorCode.INVALID_PAYLOAD.value,
    429: RATE_LIMITED,
}
INTERNAL_ERROR = "internal error; try again"


def json_response(
    data: object, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON answer, encoded with orjson (aiohttp's own encoder is the standard library's)."""
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def error_response(
    code: str,
    description: str,
    *,
    status: int = 422,
    message: str = TOKEN_REQUEST_FAILED,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {"message": message, "errors": [{"code": code, "description": description}]}
    return json_response(body, status=status, headers=headers)


def status_of(exc: TrustpubError) -> int:
    """The HTTP status of an answer refusing with ``exc``."""
    if isinstance(exc, HttpRefusal):
        return exc.status
    return _STATUS.get(exc.code, 422)


def http_error(
    status: int,
    description: str,
    *,
    message: str = "",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An answer given by status alone, its code from the map above; the message is the
    status's reason phrase unless given."""
    return error_response(
        _HTTP_CODES.get(status, "invalid-request"),
        description,
        status=status,
        message=message or HTTPStatus(status).phrase,
        headers=headers,
    )


def internal_error() -> web.Response:
    """The answer to a failure of our own: a 503 that shows nothing of it, never a 500
    (invariant 3, DESIGN.md, "Invariants")."""
    return error_response("unavailable", INTERNAL_ERROR, status=503, headers={"Retry-After": "1"})


class HttpRefusal(InvalidPayload):
    """A request refused at the transport (body too large or too slow, rate limit): its own
    HTTP status and error code, in the same JSON shape; an exchange refused this way is audited
    like any other."""

    def __init__(
        self, description: str, *, status: int, error_code: str = "", headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error_code = error_code or self.code.value
        self.headers = dict(headers or {})


def from_error(exc: TrustpubError) -> web.Response:
    if isinstance(exc, HttpRefusal):
        response = error_response(exc.error_code, exc.description, status=exc.status, headers=exc.headers)
        if exc.status == 408:
            # The body did not arrive in time: no use waiting for the rest of it. (Past a 413 or
            # 429 aiohttp drains the unread body for a bounded time before closing, so that the
            # client reads the answer rather than a connection reset.)
            response.force_close()
        return response
    status = status_of(exc)
    if status == 503:
        # An internal error's detail stays in the log of the service that had it.
        desc = exc.description if exc.code is ErrorCode.UNAVAILABLE else INTERNAL_ERROR
        return error_response("unavailable", desc, status=503, headers={"Retry-After": retry_after(exc)})
    return error_response(exc.code.value, exc.description, status=status)


# The longest Retry-After a stage may ask for: a lease's grace (registry/exchange.py) and then some.
MAX_RETRY_AFTER_S = 30


def retry_after(exc: TrustpubError) -> str:
    """Seconds until a retry can succeed: what the stage that refused said, else 1."""
    asked = exc.context.get("retry_after", "")
    if asked.isdigit() and 1 <= int(asked) <= MAX_RETRY_AFTER_S:
        return asked
    return "1"


@web.middleware
async def exchange_ids(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Give the request its exchange id (``request[EXCHANGE_ID]``), bound to every log line
    written while it is served; the public site and the admin site both use it."""
    exchange_id = new_exchange_id()
    request[EXCHANGE_ID] = exchange_id
    with structlog.contextvars.bound_contextvars(exchange_id=exchange_id):
        return await handler(request)
