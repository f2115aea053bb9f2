"""The admin API's OpenAPI 3.0 document, served at ``GET /admin/v1/openapi.json`` on the admin
port only. Written by hand from what the registry's admin module answers, and checked against
the live API by schemathesis in the test suite."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

# Every operation of the admin API is under this prefix: the admin site forwards all of them to
# the registry (admin.py), which routes them; only the document is answered here.
PREFIX = "/admin/v1"
OPENAPI_PATH = f"{PREFIX}/openapi.json"

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_RETRY = {"Retry-After": {"schema": {"type": "string"}}}


def _json(ref: str, *, array: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"$ref": f"#/components/schemas/{ref}"}
    if array:
        schema = {"type": "array", "items": schema}
    return {"application/json": {"schema": schema}}


def _errors(*codes: int) -> dict[str, Any]:
    what = {
        401: "No API token, or an unknown, revoked or expired one.",
        403: "The token's scope does not allow this.",
        404: "No such resource.",
        409: "The change conflicts with the current state.",
        413: "The body is larger than the limit.",
        422: "The request is invalid: `errors` names each field and what is wrong with it.",
    }
    # 422 for every operation: an unknown query parameter is refused, never ignored.
    out: dict[str, Any] = {
        str(c): {"description": what[c], "content": _ERROR} for c in (401, 403, 422, *codes)
    }
    out["503"] = {"description": "The registry did not answer; retry.", "headers": _RETRY, "content": _ERROR}
    return out


def _op(op_id: str, summary: str, ok: dict[str, Any], *codes: int, **extra: Any) -> dict[str, Any]:  # noqa: ANN401
    return {
        "operationId": op_id,
        "summary": summary,
        "security": [{"token": []}],
        "responses": ok | _errors(*codes),
        **extra,
    }


def _body(ref: str) -> dict[str, Any]:
    return {"required": True, "content": _json(ref)}


def _path_param(name: str, *, uuid: bool = False) -> list[dict[str, Any]]:
    schema: dict[str, Any] = {"type": "string", "format": "uuid"} if uuid else {"type": "string"}
    return [{"name": name, "in": "path", "required": True, "schema": schema}]


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


_PATHS: dict[str, Any] = {
    "/admin/v1/projects": {
        "get": _op(
            "listProjects",
            "Projects (an owner token: its own)",
            {"200": {"description": "Projects.", "content": _json("Project", array=True)}},
        ),
        "post": _op(
            "createProject",
            "Create a project (scope admin)",
            {"201": {"description": "Created.", "content": _json("Project")}},
            413,
            422,
            requestBody=_body("NewProject"),
        ),
    },
    "/admin/v1/projects/{name}": {
        "parameters": _path_param("name"),
        "get": _op(
            "showProject",
            "A project and its publishers",
            {"200": {"description": "The project.", "content": _json("ProjectDetail")}},
            404,
        ),
        "delete": _op(
            "deleteProject",
            "Delete a project without publishers (scope admin)",
            {
                "200": {
                    "description": "Deleted.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
            404,
            409,
        ),
    },
    "/admin/v1/publishers": {
        "get": _op(
            "listPublishers",
            "Publishers, of every project or of one",
            {"200": {"description": "Publishers.", "content": _json("Publisher", array=True)}},
            404,
            422,
            parameters=[_query("project", {"type": "string"})],
        ),
        "post": _op(
            "createPublisher",
            "Register a publisher (admin, or the owner of every project it names) or a pending one (admin)",
            {
                "200": {"description": "An identical publisher, linked.", "content": _json("Created")},
                "201": {"description": "Created.", "content": _json("Created")},
            },
            404,
            409,
            413,
            422,
            requestBody=_body("NewPublisher"),
        ),
    },
    "/admin/v1/publishers/{id}": {
        "parameters": _path_param("id", uuid=True),
        "get": _op(
            "showPublisher",
            "A publisher",
            {"200": {"description": "The publisher.", "content": _json("Publisher")}},
            404,
        ),
        "delete": _op(
            "removePublisher",
            "Remove a publisher (admin, or the owner of all its projects)",
            {
                "200": {
                    "description": "Removed.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
            404,
        ),
    },
    "/admin/v1/pending": {
        "get": _op(
            "listPending",
            "Pending publishers",
            {"200": {"description": "Pending publishers.", "content": _json("Pending", array=True)}},
        ),
    },
    "/admin/v1/pending/{id}": {
        "parameters": _path_param("id", uuid=True),
        "get": _op(
            "showPending",
            "A pending publisher",
            {"200": {"description": "It.", "content": _json("Pending")}},
            404,
        ),
        "delete": _op(
            "removePending",
            "Remove a pending publisher (scope admin)",
            {
                "200": {
                    "description": "Removed.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
            404,
        ),
    },
    "/admin/v1/audit": {
        "get": _op(
            "listAudit",
            "Audit records, newest first (scope admin or read)",
            {"200": {"description": "Records.", "content": _json("AuditEvent", array=True)}},
            422,
            parameters=[
                _query("kind", {"type": "string"}),
                _query("code", {"type": "string"}),
                _query("since", {"type": "string", "format": "date-time"}),
                _query("exchange_id", {"type": "string"}),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}),
                _query("refused", {"type": "string", "enum": ["true", "false"]}),
            ],
        ),
    },
    "/admin/v1/export": {
        "get": _op(
            "exportFile",
            "The projects and publishers as a publishers file (scope admin or read)",
            {"200": {"description": "The file.", "content": _json("File")}},
        ),
    },
    "/admin/v1/apply": {
        "post": _op(
            "applyFile",
            "Make the database match a publishers file (scope admin): the plan, then the changes",
            {"200": {"description": "The plan, and the changes applied.", "content": _json("Applied")}},
            409,
            413,
            422,
            requestBody=_body("ApplyRequest"),
        ),
    },
    "/admin/v1/mints/{id}/revoke": {
        "parameters": _path_param("id", uuid=True),
        "post": _op(
            "revokeMint",
            "Revoke a minted upload token (admin, or the owner of its projects)",
            {"200": {"description": "Revoked.", "content": _json("Revoked")}},
            404,
            413,
            422,
            requestBody={
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"reason": {"type": "string"}},
                            "additionalProperties": False,
                        }
                    }
                },
            },
        ),
    },
}

_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}
_OPT_STR = {"type": "string", "nullable": True}
_COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "token": {"type": "http", "scheme": "bearer", "description": "An API token (tpadm_...)."}
    },
    "schemas": {
        "Error": {
            "type": "object",
            "required": ["code", "message", "errors"],
            "properties": {
                "code": _STR,
                "message": _STR,
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["field", "message"],
                        "properties": {"field": _STR, "message": _STR},
                    },
                },
            },
        },
        "NewProject": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": _STR},
            "additionalProperties": False,
        },
        "Project": {
            "type": "object",
            "required": ["id", "name", "normalized_name", "created_at", "created_by"],
            "properties": {
                "id": _STR,
                "name": _STR,
                "normalized_name": _STR,
                "created_at": _STR,
                "created_by": _STR,
            },
        },
        "ProjectDetail": {
            "allOf": [
                {"$ref": "#/components/schemas/Project"},
                {
                    "type": "object",
                    "required": ["publishers"],
                    "properties": {
                        "publishers": {"type": "array", "items": {"$ref": "#/components/schemas/Publisher"}}
                    },
                },
            ]
        },
        "NewPublisher": {
            "type": "object",
            "description": (
                "A registration, as `trustpub publisher add <provider>` takes it: the options' names with "
                "underscores (github: owner, owner_id, repository, repository_id, workflow, environment, "
                "allowed_refs, allowed_events, allowed_reusable_workflows, pin_on_first_use; gitlab: "
                "project_path, namespace_id, project_id, ci_config_path, environment, allowed_refs, "
                "pin_on_first_use; google: email, sub; activestate: organization, activestate_project, "
                "actor_id, actor), and projects, or pending_project for a new one."
            ),
            "required": ["provider"],
            "properties": {
                "provider": {"type": "string", "enum": ["activestate", "github", "gitlab", "google"]},
                "projects": _STRS,
                "pending_project": _OPT_STR,
                "issuer": _STR,
                "registrant": _OPT_STR,
                "token_lifetime": {"type": "integer", "nullable": True},
            },
            "additionalProperties": True,
        },
        "Publisher": {
            "type": "object",
            "required": ["id", "provider", "issuer", "spec", "projects"],
            "properties": {
                "id": _STR,
                "provider": _STR,
                "issuer": _STR,
                "spec": {"type": "object"},
                "environment": _STR,
                "registrant": _STR,
                "created_at": _STR,
                "projects": _STRS,
                "needs_confirmation": {"type": "boolean"},
            },
        },
        "Pending": {
            "type": "object",
            "required": ["id", "provider", "issuer", "spec", "pending_project", "expires_at"],
            "properties": {
                "id": _STR,
                "provider": _STR,
                "issuer": _STR,
                "spec": {"type": "object"},
                "pending_project": _STR,
                "expires_at": _STR,
            },
        },
        "Created": {
            "type": "object",
            "required": ["created", "publisher"],
            "properties": {
                "created": {"type": "boolean"},
                "pending": {"type": "boolean"},
                "publisher": {"type": "object"},
            },
        },
        "AuditEvent": {
            "type": "object",
            "required": ["id", "at", "kind", "outcome", "code", "detail"],
            "properties": {
                "id": {"type": "integer"},
                "at": _STR,
                "kind": _STR,
                "outcome": _STR,
                "code": _STR,
                "detail": {"type": "object"},
            },
        },
        "File": {"type": "object", "required": ["file"], "properties": {"file": _STR}},
        "ApplyRequest": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": _STR,
                "dry_run": {"type": "boolean"},
                "prune": {"type": "boolean"},
                "plan": {"type": "array", "items": _STR},
            },
            "additionalProperties": False,
        },
        "Applied": {
            "type": "object",
            "required": ["plan", "applied"],
            "properties": {"plan": {"type": "array", "items": _STR}, "applied": {"type": "integer"}},
        },
        "Revoked": {
            "type": "object",
            "required": ["mint_id", "revoked", "revoked_now"],
            "properties": {
                "mint_id": _STR,
                "revoked": {"type": "boolean"},
                "revoked_now": {"type": "boolean"},
            },
        },
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "trustpub admin API",
            "version": "1",
            "description": (
                "Projects, trusted publishers, the audit trail and mint revocation, with API tokens "
                "(`trustpub admin token create`). Every error is "
                '{"code", "message", "errors": [{"field", "message"}]}.'
            ),
        },
        "paths": _PATHS,
        "components": _COMPONENTS,
    }


async def serve(_: web.Request) -> web.Response:
    return web.Response(
        text=json.dumps(document(), sort_keys=True),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
