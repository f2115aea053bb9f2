"""``/_/oidc/explain`` can be switched off by the operator (TRUSTPUB_EXPLAIN_ENABLED)."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from trustpub.gateway.app import Gateway, http_app
from trustpub.gateway.config import Settings
from trustpub.runtime import Runtime, load

PINNED = {"TRUSTPUB_MINTER_KEY_IDS": "a-minter-key-id"}


async def test_explain_switched_off_is_not_found_and_asks_nobody() -> None:
    settings = load(Settings, {**PINNED, "TRUSTPUB_EXPLAIN_ENABLED": "false"})
    assert settings.explain_enabled is False
    # A runtime that never connected: an answer that needed the bus could not be given.
    rt = Runtime("gateway", settings)
    async with TestClient(TestServer(http_app(Gateway(rt, settings)))) as client:
        resp = await client.post("/_/oidc/explain", json={"token": "a.b.c"})
        body = await resp.json()
    assert resp.status == 404
    assert body["errors"] == [{"code": "not-found", "description": "explain is switched off on this index"}]


def test_explain_is_on_by_default() -> None:
    assert load(Settings, PINNED).explain_enabled is True
