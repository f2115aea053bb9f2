"""The gateway's OpenAPI 3.0 document, served at ``GET /_/oidc/openapi.json``.

One operation object per endpoint, written by hand from what the handlers answer (PyPI's wire
protocol plus trustpub's own endpoints); the route table (routes.py) names each route's
operation, and the document lists the routes of the table that the running app serves.
Schemathesis checks it against the live gateway in the test suite.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from trustpub.gateway.routes import Route

# An OpenAPI operation object.
Operation = dict[str, Any]

_ERROR = {"$ref": "#/components/schemas/Error"}
_EXCHANGE_ID = {
    "X-Trustpub-Exchange-Id": {
        "description": "The exchange's id, in every service's log lines and in the audit record.",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    }
}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string", "pattern": "^[0-9]+$"}}
}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ERROR}}}
    if headers:
        out["headers"] = headers
    return out


def _token_body(what: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": (
            f"{what}. The Content-Type is not consulted (as PyPI): the body must be a UTF-8 JSON object."
        ),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TokenRequest"}}},
    }


def _transport_errors(*, audited: bool) -> dict[str, Any]:
    headers = _EXCHANGE_ID if audited else None
    return {
        "408": _error("The request body did not arrive within the body timeout.", headers),
        "413": _error("The request body is larger than the limit.", headers),
        "422": _error("Refused: the error's code says why (PyPI's codes).", headers),
        "429": _error(
            "Too many requests from this client.",
            {**_RETRY_AFTER, **_EXCHANGE_ID} if audited else _RETRY_AFTER,
        ),
        "503": _error(
            "A dependency did not answer in time; retry with a fresh token.",
            {**_RETRY_AFTER, **(headers or {})},
        ),
    }


MINT: Operation = {
    "summary": "Exchange an OIDC identity token for a short-lived upload token",
    "operationId": "mintToken",
    "requestBody": _token_body("The CI platform's OIDC token"),
    "responses": {
        "200": {
            "description": "Minted.",
            "headers": _EXCHANGE_ID,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Minted"}}},
        },
        **_transport_errors(audited=True),
    },
}
MINT_LEGACY: Operation = {**MINT, "operationId": "mintTokenLegacy"}

AUDIENCE: Operation = {
    "summary": "The audience OIDC tokens must be requested for",
    "operationId": "audience",
    "responses": {
        "200": {
            "description": "The audience.",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["audience"],
                        "properties": {"audience": {"type": "string"}},
                    }
                }
            },
        },
        "403": _error("Trusted publishing is switched off."),
    },
}

BURN: Operation = {
    "summary": "Revoke a minted token before it expires",
    "operationId": "burnToken",
    "requestBody": _token_body("The minted token"),
    "responses": {
        "202": {
            "description": "Revoked.",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["message"],
                        "properties": {"message": {"type": "string"}},
                    }
                }
            },
        },
        **_transport_errors(audited=False),
    },
}

INTROSPECT: Operation = {
    "summary": "Whether a minted token is active, and its claims (RFC 7662 style)",
    "operationId": "introspect",
    "requestBody": _token_body("The minted token"),
    "responses": {
        "200": {
            "description": "The token's state.",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["active"],
                        "properties": {"active": {"type": "boolean"}},
                        "additionalProperties": True,
                    }
                }
            },
        },
        **{k: v for k, v in _transport_errors(audited=False).items() if k != "429"},
    },
}

EXPLAIN: Operation = {
    "summary": "Dry run of an exchange: which publisher would match, and why not",
    "description": (
        "Reports in full only the publishers the token was plausibly meant for (same "
        "workflow file, pipeline file or account); of the others only that they exist and "
        "which rule differs. Audited (exchange.explained). Operators may switch it off."
    ),
    "operationId": "explain",
    "requestBody": _token_body("The CI platform's OIDC token"),
    "responses": {
        "200": {
            "description": "The verdict.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "404": _error("Explain is switched off on this index (TRUSTPUB_EXPLAIN_ENABLED)."),
        **_transport_errors(audited=False),
    },
}

JWKS: Operation = {
    "summary": "The public keys of minted tokens, for offline verification",
    "operationId": "jwks",
    "responses": {
        "200": {
            "description": "A JWK set.",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["keys"],
                        "properties": {"keys": {"type": "array", "items": {"type": "object"}}},
                    }
                }
            },
        },
        "503": _error("The minter did not answer in time.", _RETRY_AFTER),
    },
}

DOCUMENT: Operation = {
    "summary": "This document",
    "operationId": "openapi",
    "responses": {
        "200": {
            "description": "OpenAPI 3.0.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
}

_COMPONENTS = {
    "schemas": {
        "TokenRequest": {
            "type": "object",
            "required": ["token"],
            # Extra members are ignored, as PyPI's pydantic model does.
            "properties": {"token": {"type": "string"}},
            "additionalProperties": True,
        },
        "Minted": {
            "type": "object",
            "required": ["success", "token", "expires"],
            "properties": {
                "success": {"type": "boolean", "enum": [True]},
                "token": {"type": "string"},
                "expires": {"type": "integer"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["message", "errors"],
            "properties": {
                "message": {"type": "string"},
                "errors": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["code", "description"],
                        "properties": {"code": {"type": "string"}, "description": {"type": "string"}},
                    },
                },
            },
        },
    }
}


def document(
    app: web.Application, table: Iterable[Route], *, title: str = "trustpub", version: str = "1"
) -> dict[str, Any]:
    """The OpenAPI document of the routes of ``table`` that ``app`` serves."""
    served = set(served_routes(app))
    paths: dict[str, dict[str, Operation]] = {}
    for route in table:
        if (route.method, route.path) in served:
            paths.setdefault(route.path, {})[route.method.lower()] = route.operation
    return {
        "openapi": "3.0.3",
        "info": {
            "title": f"{title} gateway",
            "version": version,
            "description": (
                "PyPI-compatible Trusted Publishing: OIDC tokens in, short-lived upload tokens out. "
                'Every error is {"message": ..., "errors": [{"code", "description"}]}.'
            ),
        },
        "paths": paths,
        "components": _COMPONENTS,
    }


def served_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, path) of every route ``app``'s router has, but the HEADs aiohttp adds to GETs."""
    out: list[tuple[str, str]] = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and route.method != "HEAD":
            out.append((route.method, str(path)))
    return out


def handler(app: web.Application, table: Iterable[Route]) -> web.Response:
    """The document as a response."""
    body = json.dumps(document(app, table), sort_keys=True)
    return web.Response(
        text=body, content_type="application/json", headers={"Cache-Control": "public, max-age=300"}
    )
