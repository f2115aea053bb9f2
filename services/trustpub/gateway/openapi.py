"""The gateway's OpenAPI 3.0 document, served at ``GET /_/oidc/openapi.json``.

Written by hand from what the handlers answer (PyPI's wire protocol plus trustpub's own
endpoints) and checked against the live gateway by schemathesis in the test suite. Only the
routes the running app registered are listed, so an endpoint added later (``explain``) shows
up once its route exists.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

OPENAPI_PATH = "/_/oidc/openapi.json"

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


_MINT = {
    "post": {
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
}

_PATHS: dict[str, dict[str, Any]] = {
    "/_/oidc/audience": {
        "get": {
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
    },
    "/_/oidc/mint-token": _MINT,
    "/_/oidc/github/mint-token": {"post": {**_MINT["post"], "operationId": "mintTokenLegacy"}},
    "/_/oidc/burn-token": {
        "post": {
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
    },
    "/_/oidc/introspect": {
        "post": {
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
    },
    "/_/oidc/explain": {
        "post": {
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
    },
    "/_/oidc/jwks": {
        "get": {
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
    },
    OPENAPI_PATH: {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "responses": {
                "200": {
                    "description": "OpenAPI 3.0.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
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


def document(app: web.Application, *, title: str = "trustpub", version: str = "1") -> dict[str, Any]:
    """The OpenAPI document of the routes ``app`` serves."""
    served: dict[str, set[str]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path:
            served.setdefault(str(path), set()).add(route.method.lower())
    paths = {
        path: {method: op for method, op in ops.items() if method in served.get(path, set())}
        for path, ops in _PATHS.items()
    }
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
        "paths": {path: ops for path, ops in paths.items() if ops},
        "components": _COMPONENTS,
    }


def handler(app: web.Application) -> web.Response:
    """The document as a response."""
    body = json.dumps(document(app), sort_keys=True)
    return web.Response(
        text=body, content_type="application/json", headers={"Cache-Control": "public, max-age=300"}
    )


async def serve(request: web.Request) -> web.Response:
    return handler(request.app)
