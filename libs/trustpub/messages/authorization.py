"""The NATS authorization of a deployment, generated from the endpoint declarations.

Each service is one NATS user (an nkey) that may publish and subscribe only where its
endpoints, events and buckets say: it subscribes to the requests it serves (in its own queue
group only, so no member can take a copy of every request), to its private inbox and to
nothing else; it publishes the requests it makes, the events it owns, the JetStream API calls
its streams and buckets need, and replies only to the messages it received
(``allow_responses``). ``trustpub bus authorization`` prints this as nats-server
configuration; :func:`permissions` is what tests compare the declarations with.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trustpub.messages.endpoints import BUCKETS, ENDPOINTS, EVENTS, SERVICES, inbox_prefix
from trustpub.messages.subjects import Subjects

# A reply may be sent once per request received, within this time: longer than any request
# deadline (TRUSTPUB_REQUEST_TIMEOUT is at most 60 s), short enough that the server forgets the
# permissions of requests that were forwarded rather than answered.
RESPONSE_WINDOW = "75s"


@dataclass(frozen=True)
class Permissions:
    """What one service may do on the bus, for one or more roots."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responses: bool

    def to_nats(self) -> dict[str, Any]:
        """The ``permissions`` block of a nats-server user."""
        block: dict[str, Any] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.responses:
            block["allow_responses"] = {"max": 1, "expires": RESPONSE_WINDOW}
        return block


def _stream_api(stream: str) -> list[str]:
    return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.CREATE.{stream}"]


def permissions(service: str, roots: Iterable[str]) -> Permissions:
    """What ``service`` may publish and subscribe to under each of ``roots``."""
    pub: list[str] = []
    sub: list[str] = []
    responses = False
    for root in roots:
        sub.append(f"{inbox_prefix(root, service)}.>")
        for endpoint in ENDPOINTS:
            if endpoint.server == service:
                sub.append(f"{endpoint.subject(root)} {endpoint.queue(root)}")
                responses = True
            if service in endpoint.callers:
                pub.append(endpoint.subject(root))
        pub.extend(_jetstream(service, root))
    return Permissions(tuple(dict.fromkeys(pub)), tuple(dict.fromkeys(sub)), responses)


def may_update_events_stream(service: str) -> bool:
    """Whether ``service`` may change the events stream's configuration: its consumers only."""
    return any(service in event.consumers for event in EVENTS)


def _jetstream(service: str, root: str) -> list[str]:
    """The events ``service`` publishes or consumes, and the buckets it writes or reads."""
    names = Subjects(root)
    pub: list[str] = []
    stream = names.events_stream
    for event in EVENTS:
        if service in event.publishers:
            pub.append(event.subject(root))
            pub.extend(_stream_api(stream))
        if service in event.consumers:
            durable = names.durable(event.durable)
            pub.extend(_stream_api(stream))
            # A consumer keeps the stream's bounds (runtime/events.py: an older stream is
            # updated); publishers may not, so none can shrink what is not consumed yet.
            pub.append(f"$JS.API.STREAM.UPDATE.{stream}")
            pub.extend(
                [
                    f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
                    f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.{event.subject(root)}",
                    f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
                    f"$JS.ACK.{stream}.{durable}.>",
                ]
            )
    for bucket in BUCKETS:
        kv = f"KV_{names.bucket(bucket.suffix)}"
        if service == bucket.writer:
            pub.extend(
                [
                    f"$KV.{names.bucket(bucket.suffix)}.>",
                    *_stream_api(kv),
                    f"$JS.API.STREAM.MSG.GET.{kv}",
                    f"$JS.API.DIRECT.GET.{kv}.>",
                ]
            )
        if service in bucket.readers:
            # Read-only: a watch is an ordered, ephemeral consumer on the bucket's stream.
            pub.extend(
                [
                    f"$JS.API.STREAM.INFO.{kv}",
                    f"$JS.API.CONSUMER.CREATE.{kv}",
                    f"$JS.API.CONSUMER.CREATE.{kv}.>",
                    f"$JS.API.CONSUMER.INFO.{kv}.*",
                    f"$JS.API.CONSUMER.DELETE.{kv}.*",
                    f"$JS.FC.{kv}.>",
                ]
            )
    return pub


def nats_users(roots: Iterable[str], public_keys: Mapping[str, str]) -> list[dict[str, Any]]:
    """One nats-server user per service: its public nkey and its permissions.

    Raises:
        KeyError: a service has no public key in ``public_keys``.
    """
    roots = tuple(roots)
    return [
        {"nkey": public_keys[service], "permissions": permissions(service, roots).to_nats()}
        for service in SERVICES
    ]


def render(
    roots: Iterable[str], public_keys: Mapping[str, str], extra_users: Iterable[Mapping[str, Any]] = ()
) -> str:
    """An ``authorization`` block for a nats-server configuration file (which reads JSON)."""
    users = [*nats_users(roots, public_keys), *extra_users]
    return "authorization: " + json.dumps({"users": users}, indent=2) + "\n"


def table(root: str = "trustpub") -> str:
    """The permission table as Markdown (DESIGN.md carries it; a test keeps the two equal)."""
    lines = [
        "| service | subscribes to | publishes to | replies |",
        "| --- | --- | --- | --- |",
    ]
    for service in SERVICES:
        perms = permissions(service, (root,))
        subscribe = "<br>".join(f"`{s}`" for s in perms.subscribe)
        publish = "<br>".join(f"`{s}`" for s in perms.publish)
        replies = "once per request received" if perms.responses else "none"
        lines.append(f"| {service} | {subscribe} | {publish} | {replies} |")
    return "\n".join(lines) + "\n"
