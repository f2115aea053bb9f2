"""The registry's Prometheus metrics (bounded labels: provider, outcome, code, kind)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from trustpub.providers import PROVIDERS
from trustpub.runtime.metrics import LATENCY_BUCKETS

# Audit kinds written by this service; anything else is counted as "other".
AUDIT_KINDS = frozenset(
    {
        "exchange.succeeded",
        "exchange.failed",
        "exchange.explained",
        "mint.granted",
        "mint.regranted",
        "mint.released",
        "publisher.created",
        "publisher.linked",
        "publisher.removed",
        "publisher.pinned",
        "mint.revoked",
        "project.created",
        "pending.created",
        "pending.converted",
        "pending.pinned",
        "pending.invalidated",
        "pending.expired",
        "pending.removed",
        "upload.accepted",
        "upload.refused",
    }
)


def provider_label(provider: str) -> str:
    """A token's provider as a label value: a known provider, or "other"."""
    return provider if provider in PROVIDERS else "other"


def kind_label(kind: str) -> str:
    return kind if kind in AUDIT_KINDS else "other"


class RegistryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.match_total = Counter(
            "trustpub_match_total",
            "Publisher matches, by provider, outcome (granted, refused, unavailable, error) and error code.",
            ["provider", "outcome", "code"],
            registry=registry,
        )
        self.candidates_stale = Counter(
            "trustpub_match_candidates_stale_total",
            "Exchanges whose cached candidates had changed (registry generation moved): matched "
            "again from a fresh read.",
            registry=registry,
        )
        self.match_duration = Histogram(
            "trustpub_match_duration_seconds",
            "Time to match a verified token to a publisher and record the mint, by provider.",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.replays_refused = Counter(
            "trustpub_replays_refused_total",
            "Exchanges refused because the token's id was used before, by provider.",
            ["provider"],
            registry=registry,
        )
        self.regranted = Counter(
            "trustpub_mints_regranted_total",
            "Mint records granted again to a later presentation of the same token, none of "
            "their tokens having been delivered, by provider.",
            ["provider"],
            registry=registry,
        )
        self.delivery_marks = Counter(
            "trustpub_mint_delivery_reports_total",
            "Gateway reports applied to mint records, by kind: delivered (a token of the "
            "record reached its client) or released (an exchange answered without one).",
            ["kind"],
            registry=registry,
        )
        self.publishers_pinned = Counter(
            "trustpub_publishers_pinned_total",
            "Publishers whose ids were pinned on first use, by provider.",
            ["provider"],
            registry=registry,
        )
        self.pending_converted = Counter(
            "trustpub_pending_publishers_converted_total",
            "Pending publishers turned into normal ones, their project created, by a first exchange.",
            ["provider"],
            registry=registry,
        )
        self.audit_events = Counter(
            "trustpub_audit_events_total",
            "Rows written to the audit trail, by kind.",
            ["kind"],
            registry=registry,
        )
        self.audit_backlog = Gauge(
            "trustpub_audit_backlog",
            "Events of an audit consumer not yet stored (undelivered plus unacknowledged), by event.",
            ["event"],
            registry=registry,
        )

    def audited(self, kind: str, n: int = 1) -> None:
        if n:
            self.audit_events.labels(kind_label(kind)).inc(n)
