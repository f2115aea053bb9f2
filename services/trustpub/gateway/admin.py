"""The admin API's listener: a second HTTP site of the gateway, on ``TRUSTPUB_ADMIN_PORT``
only (DESIGN.md, "The admin API").

It decides nothing: each call under ``/admin/v1/`` goes to the registry as one sealed
``admin.call`` (the token, method, path, query and body), and the registry's answer (status,
JSON body) is written back. ``GET /admin/v1/openapi.json`` is the API's document. A registry
that does not answer in time is a 503, anything unexpected too: never a 500.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, cast

import orjson
import structlog
from aiohttp import web

from trustpub.gateway import adminopenapi, limits
from trustpub.gateway.config import Settings
from trustpub.gateway.errors import INTERNAL_ERROR, exchange_ids
from trustpub.messages import TrustpubError
from trustpub.messages.endpoints import ADMIN_CALL
from trustpub.messages.v1 import AdminRequest
from trustpub.runtime import Runtime
from trustpub.runtime.service import bound_port

log = structlog.get_logger("trustpub.gateway.admin")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"code": code, "message": message, "errors": []}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


@web.middleware
async def _never_500(request: web.Request, handler: Any) -> web.StreamResponse:  # noqa: ANN401
    try:
        return cast("web.StreamResponse", await handler(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = _error(exc.status, "invalid-request", exc.reason)
        if "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except Exception:  # the last line of defence (DESIGN.md, "Invariants"): never a 500
        log.exception("admin_handler_failed", path=request.path[:200])
        return _error(503, "unavailable", INTERNAL_ERROR, {"Retry-After": "1"})


class AdminListener:
    def __init__(self, rt: Runtime, settings: Settings) -> None:
        self.rt = rt
        self.settings = settings

    async def forward(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        try:
            body = (await request.read()).decode("utf-8")
        except UnicodeDecodeError:
            return _error(422, "invalid-request", "the body is not UTF-8")
        path = request.match_info["tail"]
        call = AdminRequest(
            token=token,
            method=request.method,
            path="/" + path,
            query={k: request.query.getone(k) for k in request.query},
            body=body,
        )
        try:
            reply = await self.rt.call(ADMIN_CALL, call, deadline=time.time() + self.settings.request_timeout)
        except TrustpubError as exc:
            log.warning("admin_call_failed", code=exc.code.value, description=exc.description[:200])
            return _error(503, "unavailable", "the registry did not answer; try again", {"Retry-After": "1"})
        return web.Response(
            status=reply.status,
            text=reply.body,
            content_type="application/json",
            headers=reply.headers or None,
        )


def admin_app(rt: Runtime, settings: Settings) -> web.Application:
    listener = AdminListener(rt, settings)
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[exchange_ids, _never_500])
    app.router.add_get(adminopenapi.OPENAPI_PATH, adminopenapi.serve)
    app.router.add_route("*", adminopenapi.PREFIX + "/{tail:.*}", listener.forward)
    return app


async def start(rt: Runtime, stack: contextlib.AsyncExitStack, settings: Settings) -> None:
    """Listen for the admin API, if ``TRUSTPUB_ADMIN_PORT`` is set."""
    if settings.admin_port is None:
        return
    runner = limits.runner(admin_app(rt, settings), settings)
    await runner.setup()
    rt.before_drain.append(runner.cleanup)
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, settings.admin_host, settings.admin_port)
    await site.start()
    rt.admin_port = bound_port(runner, settings.admin_port)
    log.info("admin_listening", host=settings.admin_host, port=rt.admin_port)
