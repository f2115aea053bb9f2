"""Prometheus metrics that every service exposes (prefix ``trustpub_``, base units)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Buckets from 0.5 ms to 10 s: a NATS hop is ~0.3 ms idle, an exchange ~2-30 ms, and the
# request deadline is 5 s by default.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class RuntimeMetrics:
    """Metrics of the service runtime itself, registered on the service's registry."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.endpoint_duration = Histogram(
            "trustpub_nats_endpoint_duration_seconds",
            "Time a NATS endpoint took to answer one request, by endpoint and outcome.",
            ["endpoint", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.endpoint_inflight = Gauge(
            "trustpub_nats_endpoint_inflight",
            "Requests an endpoint is handling right now.",
            ["endpoint"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "trustpub_nats_request_duration_seconds",
            "Time this service waited for another service's reply, by subject and outcome.",
            ["endpoint", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.bus_refused = Counter(
            "trustpub_bus_refused_total",
            "Messages this service refused to act upon: a missing or wrong seal, a sender the "
            "endpoint does not allow, a reply subject outside the callers' inboxes, an expired deadline.",
            ["endpoint", "reason"],
            registry=registry,
        )
        self.retried = Counter(
            "trustpub_requests_retried_total",
            "Requests sent again before their deadline because no service answered on the "
            "subject (not subscribed yet) or the bus was reconnecting, by endpoint.",
            ["endpoint"],
            registry=registry,
        )
        self.expired = Counter(
            "trustpub_requests_expired_total",
            "Requests dropped unhandled: their deadline had passed when their turn came, so "
            "their caller had answered already.",
            ["endpoint"],
            registry=registry,
        )
        self.ready = Gauge(
            "trustpub_service_ready",
            "1 while this service instance is ready to take work.",
            ["service"],
            registry=registry,
        )
        self.ready_child = self.ready.labels(service)
        self.info = Gauge(
            "trustpub_service_info",
            "Always 1; labels say which service this is.",
            ["service"],
            registry=registry,
        )
        self.info.labels(service).set(1)


__all__ = ["LATENCY_BUCKETS", "CollectorRegistry", "Counter", "Gauge", "Histogram", "RuntimeMetrics"]
