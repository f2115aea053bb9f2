"""The gateway's transport limits as plain functions: the token bucket, who the client is,
the settings' validation, and the OpenAPI document's coverage of the routes."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from trustpub.gateway import limits, openapi
from trustpub.gateway.config import Settings
from trustpub.gateway.routes import ROUTES
from trustpub.runtime.config import ConfigError, load


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = limits.RateLimiter(rate=2, burst=3, clock=clock)
    assert [limiter.take("a")[0] for _ in range(3)] == [True, True, True]
    allowed, retry_after, first = limiter.take("a")
    assert (allowed, first) == (False, True)
    assert retry_after == pytest.approx(0.5)
    # Refused again: counted, not "first" (the audit records only the first of a run).
    assert limiter.take("a")[:3:2] == (False, False)
    clock.now += 0.5
    assert limiter.take("a")[0] is True
    # Another client has its own bucket.
    assert limiter.take("b")[0] is True
    # After being allowed again, the next refusal starts a new run.
    assert limiter.take("a") == (False, pytest.approx(0.5), True)


def test_bucket_never_holds_more_than_its_burst_and_forgets_the_least_recent() -> None:
    clock = Clock()
    limiter = limits.RateLimiter(rate=100, burst=2, max_clients=2, clock=clock)
    limiter.take("a")
    clock.now += 3600  # an hour idle refills to the burst, not to 360000
    assert [limiter.take("a")[0] for _ in range(3)] == [True, True, False]
    limiter.take("b")
    limiter.take("c")  # evicts "a", the least recently used
    assert len(limiter) == 2
    assert limiter.take("a")[0] is True  # a fresh (full) bucket


def request(peer: str, forwarded: str | None = None) -> web.Request:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    req = make_mocked_request("POST", "/_/oidc/mint-token", headers=headers)
    return req.clone(remote=peer)


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        ("192.0.2.1", "203.0.113.5", (), "192.0.2.1"),  # no trusted proxies: the header is ignored
        ("192.0.2.1", "203.0.113.5", ("10.0.0.0/8",), "192.0.2.1"),  # the peer is no proxy
        ("10.0.0.2", "203.0.113.5", ("10.0.0.0/8",), "203.0.113.5"),
        ("10.0.0.2", "198.51.100.1, 203.0.113.5", ("10.0.0.0/8",), "203.0.113.5"),  # left: client-written
        ("10.0.0.2", "203.0.113.5, 10.0.0.9", ("10.0.0.0/8",), "203.0.113.5"),  # two proxies
        ("10.0.0.2", "10.0.0.7, 10.0.0.9", ("10.0.0.0/8",), "10.0.0.2"),  # only proxies: the peer
        ("10.0.0.2", "garbage", ("10.0.0.0/8",), "10.0.0.2"),  # a broken chain: the peer
        ("10.0.0.2", None, ("10.0.0.0/8",), "10.0.0.2"),
    ],
)
def test_client_address(peer: str, forwarded: str | None, trusted: tuple[str, ...], client: str) -> None:
    assert limits.client_address(request(peer, forwarded), limits.networks(trusted)) == client


def test_bucket_key_groups_ipv6_by_64_and_unmaps_ipv4() -> None:
    assert limits.bucket_key("2001:db8:1:2:3:4:5:6") == limits.bucket_key("2001:db8:1:2:ffff::1")
    assert limits.bucket_key("2001:db8:1:2::1") != limits.bucket_key("2001:db8:1:3::1")
    assert limits.bucket_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert limits.bucket_key("192.0.2.1") == "192.0.2.1"


PINNED = {"TRUSTPUB_MINTER_KEY_IDS": "a-minter-key-id"}


def test_rate_limit_is_generous_by_default_and_can_be_switched_off() -> None:
    settings = Settings(minter_key_ids=("a-minter-key-id",))
    assert settings.rate_limit >= 100
    assert settings.rate_limit_burst >= 100
    off = load(Settings, {**PINNED, "TRUSTPUB_RATE_LIMIT": "0"})
    assert off.rate_limit == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRUSTPUB_TRUSTED_PROXIES": "10.0.0.0/8,not-an-address"}, "not an IP address or CIDR block"),
        ({"TRUSTPUB_RATE_LIMIT": "-1"}, "TRUSTPUB_RATE_LIMIT"),
        ({"TRUSTPUB_BODY_TIMEOUT": "0"}, "TRUSTPUB_BODY_TIMEOUT must be positive"),
        ({"TRUSTPUB_MAX_HEADER_BYTES": "100"}, "TRUSTPUB_MAX_HEADER_BYTES"),
        ({"TRUSTPUB_MAX_HEADERS": "2"}, "TRUSTPUB_MAX_HEADERS"),
        # A stage refuses a deadline further ahead than a seal may be valid (runtime/seal.py).
        ({"TRUSTPUB_REQUEST_TIMEOUT": "61"}, "TRUSTPUB_REQUEST_TIMEOUT must be at most 60 s"),
    ],
)
def test_bad_limit_settings_are_refused_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(Settings, {**PINNED, **env})


def test_the_gateway_does_not_start_without_the_minter_key_ids_it_trusts() -> None:
    with pytest.raises(ConfigError, match="TRUSTPUB_MINTER_KEY_IDS is required"):
        load(Settings, {})


def test_openapi_document_lists_only_the_routes_served() -> None:
    app = web.Application()

    async def handler(_: web.Request) -> web.Response:
        return web.Response()

    app.router.add_post("/_/oidc/mint-token", handler)
    app.router.add_get("/_/oidc/audience", handler)
    doc = openapi.document(app, ROUTES)
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/_/oidc/mint-token", "/_/oidc/audience"}
    mint = doc["paths"]["/_/oidc/mint-token"]["post"]
    assert {"200", "408", "413", "422", "429", "503"} <= set(mint["responses"])
    assert "Retry-After" in mint["responses"]["429"]["headers"]
    assert doc["components"]["schemas"]["Error"]["required"] == ["message", "errors"]
