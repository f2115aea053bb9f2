"""Prometheus metrics of the jwks service (prefix ``trustpub_jwks_``, label ``issuer``).

``issuer`` label values are configured issuers only (a bounded set), never a string taken
from a request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# A fetch is two HTTP requests to a CDN-backed endpoint (~50-300 ms) and is cut at
# fetch_timeout (5 s by default).
FETCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REFRESH_RESULTS = ("ok", "unchanged", "error", "refused", "cooldown", "followed")

_AGE_NAME = "trustpub_jwks_keyset_age_seconds"
_AGE_HELP = "Seconds since the issuer's key set was last fetched successfully (computed at scrape)."


class _KeySetAge(Collector):
    """Age of each key set at scrape time: stays right while no refresh succeeds."""

    def __init__(self, ages: Callable[[], Iterable[tuple[str, float]]]) -> None:
        self._ages = ages

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(_AGE_NAME, _AGE_HELP, labels=["issuer"])
        for issuer, age in self._ages():
            family.add_metric([issuer], max(0.0, age))
        yield family

    def describe(self) -> Iterator[Metric]:
        # Describing without collecting: the registry calls this when registering.
        yield GaugeMetricFamily(_AGE_NAME, _AGE_HELP, labels=["issuer"])


class JwksMetrics:
    """The service's metrics, registered on the runtime's registry."""

    def __init__(self, registry: CollectorRegistry, ages: Callable[[], Iterable[tuple[str, float]]]) -> None:
        self.refresh_total = Counter(
            "trustpub_jwks_refresh_total",
            "Key set refreshes by issuer and result: ok (new set stored), unchanged, error (the "
            "issuer did not answer well), refused (its answer was not accepted), cooldown (too soon), "
            "followed (another replica was fetching; its result was used).",
            ["issuer", "result"],
            registry=registry,
        )
        self.fetch_duration = Histogram(
            "trustpub_jwks_fetch_duration_seconds",
            "Time one fetch of an issuer's discovery document and key set took, whatever its result.",
            ["issuer"],
            buckets=FETCH_BUCKETS,
            registry=registry,
        )
        self.keys = Gauge(
            "trustpub_jwks_keys",
            "Keys in the issuer's current key set.",
            ["issuer"],
            registry=registry,
        )
        self.keys_dropped = Counter(
            "trustpub_jwks_keys_dropped_total",
            "Keys left out of a fetched key set because they were unusable, by reason "
            "(kid, private, kty, use, alg, key).",
            ["issuer", "reason"],
            registry=registry,
        )
        registry.register(_KeySetAge(ages))
