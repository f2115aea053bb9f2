"""Fetching an issuer's key set over HTTP(S), from URLs the operator configured.

Nothing a token carries (``iss``, ``jku``, ``x5u``) reaches this module: the only URLs are
the configured issuer's discovery document, then the ``jwks_uri`` it names, which must be on
the issuer's own host, or the issuer's configured ``jwks_url``. Redirects are not followed,
bodies are capped and parsed strictly, and the whole fetch has one time budget.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from trustpub.jwks.validate import KeySetRefused, ValidKeys, validate_key_set
from trustpub.messages import strictjson
from trustpub.messages.text import shown
from trustpub.providers.issuers import Issuer, https_origin, is_loopback, origins

# (DESIGN.md, "Keys of identity providers"): connect within 2 s; the total (fetch_timeout) bounds the rest.
CONNECT_TIMEOUT_S = 2.0
# A JWKS or discovery document nests 3 or 4 levels; anything much deeper is an attack on
# the parser, refused before it costs anything.
MAX_JSON_DEPTH = 16
_CHUNK = 16 * 1024


class FetchError(Exception):
    """A fetch failed (``result`` "error") or its content was refused ("refused")."""

    def __init__(self, reason: str, *, result: str = "error") -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result


def new_session(fetch_timeout: float) -> aiohttp.ClientSession:
    """The service's one HTTP client: bounded timeouts, no cookies, TLS verification on."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=fetch_timeout, connect=min(CONNECT_TIMEOUT_S, fetch_timeout)),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"Accept": "application/json", "User-Agent": "trustpub-jwks/1"},
        connector=aiohttp.TCPConnector(limit=32),
    )


class Fetcher:
    """Fetches and validates an issuer's key set; stateless, safe to share."""

    def __init__(
        self, session: aiohttp.ClientSession, *, timeout: float, max_bytes: int, max_keys: int
    ) -> None:
        self._session = session
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._max_keys = max_keys

    async def fetch(self, iss: Issuer) -> ValidKeys:
        """The issuer's usable keys, fetched now.

        Raises:
            FetchError: the issuer did not answer well within the time budget ("error"), or
                what it answered is not accepted ("refused"); ``reason`` says which.
        """
        try:
            # One budget for discovery and key set together: a caller waiting for a refresh
            # waits at most this long, however the time is split between the two requests.
            async with asyncio.timeout(self._timeout):
                url = iss.jwks_url or await self._discover(iss)
                doc, max_age = await self._get_json(url, "key set")
        except TimeoutError:
            raise FetchError(f"no complete answer within {self._timeout:g} s") from None
        try:
            valid = validate_key_set(doc, algorithms=iss.algorithms, max_keys=self._max_keys)
        except KeySetRefused as exc:
            raise FetchError(exc.reason, result="refused") from exc
        return dataclasses.replace(valid, max_age=max_age)

    async def _discover(self, iss: Issuer) -> str:
        doc, _ = await self._get_json(iss.discovery, "discovery document")
        if not isinstance(doc, dict):
            raise FetchError("discovery document is not a JSON object", result="refused")
        # OpenID Connect Discovery 1.0 §4.3: the issuer value must be identical to the one
        # the document was retrieved for, else the document is not that issuer's.
        if doc.get("issuer") != iss.issuer:
            raise FetchError(
                f"discovery document names issuer {_show(doc.get('issuer'))}, expected {iss.issuer!r}",
                result="refused",
            )
        uri = doc.get("jwks_uri")
        check_jwks_uri(uri, iss)
        return str(uri)

    async def _get_json(self, url: str, what: str) -> tuple[Any, float | None]:
        """The parsed JSON at ``url`` and the response's Cache-Control max-age (if any)."""
        try:
            # No redirects: a 3xx could send the fetch to another host, and the URLs that
            # trustpub fetches are exactly the ones the operator configured.
            async with self._session.get(url, allow_redirects=False) as resp:
                if resp.status != 200:
                    if 300 <= resp.status < 400:
                        raise FetchError(
                            f"{what} at {url} answered HTTP {resp.status}; redirects are not followed",
                            result="refused",
                        )
                    raise FetchError(f"{what} at {url} answered HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > self._max_bytes:
                    raise FetchError(
                        f"{what} at {url} is {resp.content_length} bytes, at most {self._max_bytes} accepted",
                        result="refused",
                    )
                max_age = cache_max_age(resp.headers.getall("Cache-Control", []))
                body = bytearray()
                # Read incrementally and stop past the cap: a length header may be absent
                # or lie, and a compressed body may inflate.
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    body.extend(chunk)
                    if len(body) > self._max_bytes:
                        raise FetchError(f"{what} at {url} is over {self._max_bytes} bytes", result="refused")
        except aiohttp.ClientError as exc:
            raise FetchError(f"{what} at {url}: {type(exc).__name__}: {shown(exc, 197)}") from exc
        except TimeoutError:
            raise FetchError(f"{what} at {url}: no answer within {self._timeout:g} s") from None
        return parse_json(bytes(body), f"{what} at {url}"), max_age


def cache_max_age(values: list[str]) -> float | None:
    """The freshness lifetime that Cache-Control headers give, in seconds (RFC 9111 §5.2.2):
    ``max-age``, or 0 for ``no-cache``/``no-store``; None when they say nothing usable."""
    ages: list[float] = []
    for value in values:
        for directive in value.split(","):
            name, _, arg = directive.strip().partition("=")
            name = name.strip().lower()
            if name in ("no-cache", "no-store"):
                ages.append(0.0)
            elif name == "max-age":
                arg = arg.strip().strip('"')
                # Digits only, bounded: a malformed or absurd value is ignored, not trusted.
                if arg.isascii() and arg.isdigit() and len(arg) <= 10:
                    ages.append(float(arg))
    # Several directives: the most conservative (shortest) one wins.
    return min(ages) if ages else None


def check_jwks_uri(uri: object, iss: Issuer) -> None:
    """Accept ``uri`` only over https on the issuer's host or one of its ``jwks_hosts``
    (or on loopback when the issuer allows it).

    Raises:
        FetchError: (result "refused") the URI is not acceptable; the reason says why.
    """
    if not isinstance(uri, str) or not uri:
        raise FetchError(f"discovery document has no jwks_uri string, got {_show(uri)}", result="refused")
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        origin = https_origin(uri)  # raises ValueError for a malformed port
    except ValueError:
        raise FetchError(f"jwks_uri {_show(uri)} is not a URL", result="refused") from None
    if parts.username is not None or parts.password is not None or not host:
        raise FetchError(f"jwks_uri {_show(uri)} must be an absolute URL, no credentials", result="refused")
    if iss.allow_loopback_http and is_loopback(host) and parts.scheme in ("http", "https"):
        return  # development and tests only: the operator opted in for this issuer
    # The issuer's own host and port, or a host the operator configured for its keys (Google's
    # keys are on www.googleapis.com) on 443: a discovery document cannot send the fetch
    # anywhere else, another port of the issuer's host included.
    allowed = origins(iss, keys=True)
    if origin in allowed:
        return
    hosts = ", ".join(f"'{h}:{p}'" for h, p in sorted(allowed))
    raise FetchError(
        f"jwks_uri {_show(uri)} is not https on the issuer's hosts and ports ({hosts})", result="refused"
    )


def parse_json(body: bytes, what: str) -> Any:  # noqa: ANN401  (parsed JSON)
    """Strict JSON (trustpub.messages.strictjson), depth-bounded.

    Raises:
        FetchError: (result "refused") the body is not such JSON.
    """
    try:
        return strictjson.loads(body, max_depth=MAX_JSON_DEPTH)
    except strictjson.StrictJSONError as exc:
        raise FetchError(f"{what} {exc}", result="refused") from None


def _show(value: object) -> str:
    return shown(repr(value), 77)
