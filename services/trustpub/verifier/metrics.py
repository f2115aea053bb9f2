"""The verifier's Prometheus metrics (prefix ``trustpub_``, base units, bounded labels)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# An RS256 verification costs ~130 µs; a refresh of keys can take up to the refresh timeout.
VERIFY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.5,
    1.0,
    2.5,
    5.0,
)


_AGE_NAME = "trustpub_verifier_keyset_age_seconds"
_AGE_HELP = (
    "Seconds since the key set this verifier holds for the issuer was fetched by the jwks "
    "service (computed at scrape); past the staleness bound the issuer's tokens get unavailable."
)

Ages = Callable[[], Iterable[tuple[str, float]]]


class _KeySetAge(Collector):
    """The age of each held key set at scrape time: right even while nothing arrives."""

    def __init__(self) -> None:
        self.source: Ages = list

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(_AGE_NAME, _AGE_HELP, labels=["issuer"])
        for issuer, age in self.source():
            family.add_metric([issuer], max(0.0, age))
        yield family

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(_AGE_NAME, _AGE_HELP, labels=["issuer"])


class VerifierMetrics:
    """Registered on the service's registry; labels are providers, issuers (configured only),
    outcomes and error codes, never a kid, subject or token id."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.verify_total = Counter(
            "trustpub_verify_total",
            "Tokens verified, by provider ('unknown' before the issuer is known), outcome and error code.",
            ["provider", "outcome", "code"],
            registry=registry,
        )
        self.verify_duration = Histogram(
            "trustpub_verify_duration_seconds",
            "Time one verification took, including a key refresh when one was needed.",
            ["provider"],
            buckets=VERIFY_BUCKETS,
            registry=registry,
        )
        self.keys = Gauge(
            "trustpub_verifier_keys",
            "Usable keys this verifier holds, by issuer.",
            ["issuer"],
            registry=registry,
        )
        self.key_refresh_total = Counter(
            "trustpub_verifier_key_refresh_total",
            "Refreshes asked of the jwks service because a token named an unknown key, by result.",
            ["issuer", "result"],
            registry=registry,
        )
        self.stale_total = Counter(
            "trustpub_verifier_stale_keys_total",
            "Tokens answered unavailable because the issuer's key set was older than the "
            "staleness bound (the issuer has not been reached for that long).",
            ["issuer"],
            registry=registry,
        )
        self._ages = _KeySetAge()
        registry.register(self._ages)
        # labels() costs a lock and a dict lookup; the hot path reuses the children.
        self._verify_children: dict[tuple[str, str, str], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}

    def watch_ages(self, ages: Ages) -> None:
        """Report the key set ages that ``ages`` gives (the key cache's) at every scrape."""
        self._ages.source = ages

    def observe(self, provider: str, outcome: str, code: str, seconds: float) -> None:
        key = (provider, outcome, code)
        counter = self._verify_children.get(key)
        if counter is None:
            counter = self._verify_children[key] = self.verify_total.labels(provider, outcome, code)
        counter.inc()
        hist = self._duration_children.get(provider)
        if hist is None:
            hist = self._duration_children[provider] = self.verify_duration.labels(provider)
        hist.observe(seconds)
