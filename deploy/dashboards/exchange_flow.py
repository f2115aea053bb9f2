"""The "trustpub: exchange flow" Grafana dashboard, built with the Grafana Foundation SDK.

    python -m deploy.dashboards.exchange_flow > deploy/dashboards/exchange-flow.json
    make dashboards                      # the same

The JSON beside this file is generated: edit this module, never the JSON (a test checks
that the two agree, and another runs every query against a real Prometheus scraping a
running stack). Metric names and labels: docs/metrics.md.
"""

from __future__ import annotations

import json
import sys

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
)

UID = "trustpub-exchange-flow"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Grafana picks a window of at least four scrape intervals for rate(); the live test
# substitutes a fixed window.
RATE = "$__rate_interval"
PROVIDER = 'provider=~"$provider"'
STAGES = "token.verify|publisher.match|token.mint"


def query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref).datasource(DATASOURCE)
    )


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def series(title: str, description: str, unit: str, *queries: prometheus.Dataquery) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .height(8)
        .span(12)
        .fill_opacity(10)
        .line_width(1)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI))
    )
    for q in queries:
        panel = panel.with_target(q)
    return panel


def single(title: str, description: str, unit: str, expr: str, steps: dash.ThresholdsConfig) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(4)
        .span(6)
        .thresholds(steps)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(common.BigValueGraphMode.AREA)
        .with_target(query(expr))
    )


def quantile(q: float, bucket: str, by: str = "", selector: str = "") -> str:
    groups = ", ".join(["le", *([by] if by else [])])
    matchers = f"{{{selector}}}" if selector else ""
    return f"histogram_quantile({q}, sum by ({groups}) (rate({bucket}_bucket{matchers}[{RATE}])))"


def exchanges(selector: str = "") -> str:
    inner = ", ".join(s for s in (PROVIDER, selector) if s)
    return f"trustpub_exchange_requests_total{{{inner}}}"


def ratio(outcome: str) -> str:
    return (
        f"(sum(rate({exchanges(f'outcome={json.dumps(outcome)}')}[{RATE}])) or vector(0))"
        f" / sum(rate({exchanges()}[{RATE}]))"
    )


def stream_fill() -> str:
    """The events stream's usage over its bound, per bound (bytes, messages); a bound of -1
    (none) gives no series. The same as rules.yml's trustpub:events_stream_fill:ratio."""
    per_bound = []
    for bound in ("bytes", "messages"):
        ratio = f"trustpub_events_stream_{bound} / (trustpub_events_stream_max_{bound} > 0)"
        per_bound.append(f'label_replace({ratio}, "bound", "{bound}", "", "")')
    return f"max by (bound) ({' or '.join(per_bound)})"


def build() -> dash.Dashboard:
    """The dashboard, panel by panel, in the order an operator reads it during an incident."""
    db = (
        dash.Dashboard("trustpub: exchange flow")
        .uid(UID)
        .description(
            "Token exchanges through gateway, verifier, registry and minter: rate, refusals by "
            "code, latency per stage, replicas per service, issuer key freshness, audit; uploads "
            "through the gate."
        )
        .tags(["trustpub"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(dash.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            dash.QueryVariable("provider")
            .label("Provider")
            .datasource(DATASOURCE)
            .query("label_values(trustpub_exchange_requests_total, provider)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )

    # -- the flow at a glance ---------------------------------------------------------
    db = (
        db.with_row(dash.Row("Exchanges"))
        .with_panel(
            single(
                "Exchanges / s",
                "Token exchanges answered per second, all outcomes.",
                "reqps",
                f"sum(rate({exchanges()}[{RATE}]))",
                thresholds((None, "blue")),
            )
        )
        .with_panel(
            single(
                "Unavailable (503)",
                "Share of exchanges answered 503: a dependency was down or too slow. Alert: "
                "TrustpubExchangeErrorRatioHigh above 5%.",
                "percentunit",
                ratio("unavailable"),
                thresholds((None, "green"), (0.01, "orange"), (0.05, "red")),
            )
        )
        .with_panel(
            single(
                "Refused (422)",
                "Share of exchanges refused with a PyPI error code: bad tokens, or publishers that "
                "do not match. A jump usually means a misconfigured workflow or audience.",
                "percentunit",
                ratio("refused"),
                thresholds((None, "green"), (0.25, "orange"), (0.5, "red")),
            )
        )
        .with_panel(
            single(
                "Ready verifiers",
                "Verifier processes ready to take work. Zero means every exchange fails (alert "
                "TrustpubNoVerifierReplicas).",
                "none",
                'sum(trustpub_service_ready{service="verifier"}) or vector(0)',
                thresholds((None, "red"), (1, "orange"), (2, "green")),
            )
        )
        .with_panel(
            series(
                "Exchanges by outcome",
                "minted, refused (422) or unavailable (503), per second.",
                "reqps",
                query(f"sum by (outcome) (rate({exchanges()}[{RATE}]))", "{{outcome}}"),
            )
        )
        .with_panel(
            series(
                "Errors by code",
                "Exchanges not minted, by PyPI error code (invalid-token, invalid-publisher, "
                "invalid-reuse-token, ...) or unavailable.",
                "reqps",
                query(
                    f"sum by (code) (rate({exchanges('outcome!=' + json.dumps('minted'))}[{RATE}]))",
                    "{{code}}",
                ),
            )
        )
        .with_panel(
            series(
                "Exchanges by provider",
                "Per identity provider, all outcomes.",
                "reqps",
                query(f"sum by (provider) (rate({exchanges()}[{RATE}]))", "{{provider}}"),
            )
        )
        .with_panel(
            series(
                "Upload tokens minted",
                "Tokens signed by the minter, per second.",
                "reqps",
                query(f"sum(rate(trustpub_tokens_minted_total[{RATE}]))", "minted"),
            )
        )
    )

    # -- where the time goes ------------------------------------------------------------
    db = (
        db.with_row(dash.Row("Latency per stage"))
        .with_panel(
            series(
                "p99 latency per stage",
                "End to end at the gateway, and each stage of the pipeline as its service handles it "
                "(each hands its result to the next). Alert: TrustpubExchangeLatencyHigh above 500 ms.",
                "s",
                query(quantile(0.99, "trustpub_exchange_duration_seconds"), "gateway (end to end)", "A"),
                query(
                    quantile(
                        0.99, "trustpub_nats_endpoint_duration_seconds", "endpoint", f'endpoint=~"{STAGES}"'
                    ),
                    "{{endpoint}}",
                    "B",
                ),
            )
        )
        .with_panel(
            series(
                "p50 latency per stage",
                "The median, same stages.",
                "s",
                query(quantile(0.5, "trustpub_exchange_duration_seconds"), "gateway (end to end)", "A"),
                query(
                    quantile(
                        0.5, "trustpub_nats_endpoint_duration_seconds", "endpoint", f'endpoint=~"{STAGES}"'
                    ),
                    "{{endpoint}}",
                    "B",
                ),
            )
        )
        .with_panel(
            series(
                "Work inside each service (p99)",
                "Time spent inside the service: verification (key refresh included), the registry's "
                "match transaction, the minter's signing.",
                "s",
                query(quantile(0.99, "trustpub_verify_duration_seconds"), "verify", "A"),
                query(quantile(0.99, "trustpub_match_duration_seconds"), "match", "B"),
                query(
                    quantile(0.99, "trustpub_nats_endpoint_duration_seconds", "", 'endpoint="token.mint"'),
                    "mint",
                    "C",
                ),
            )
        )
        .with_panel(
            series(
                "NATS endpoints p99",
                "Every request/reply endpoint, as its service answers it.",
                "s",
                query(quantile(0.99, "trustpub_nats_endpoint_duration_seconds", "endpoint"), "{{endpoint}}"),
            )
        )
        .with_panel(
            series(
                "Requests in flight per endpoint",
                "Requests being handled right now, summed over replicas; a plateau at the configured "
                "concurrency means the service is saturated.",
                "none",
                query("sum by (endpoint) (trustpub_nats_endpoint_inflight)", "{{endpoint}}"),
            )
        )
    )

    # -- capacity ---------------------------------------------------------------------
    db = (
        db.with_row(dash.Row("Replicas"))
        .with_panel(
            series(
                "Ready replicas per service",
                "Processes whose /readyz is ready, per service. The verifier is the one the HPA "
                "scales on CPU.",
                "none",
                query("sum by (service) (trustpub_service_ready)", "{{service}}"),
            )
        )
        .with_panel(
            series(
                "Running processes per service",
                "Processes Prometheus scrapes, ready or not.",
                "none",
                query("count by (service) (trustpub_service_info)", "{{service}}"),
            )
        )
    )

    # -- issuers' keys ------------------------------------------------------------------
    db = (
        db.with_row(dash.Row("Issuer keys"))
        .with_panel(
            series(
                "Key set age",
                "Seconds since each issuer's key set was fetched successfully: in the jwks service "
                "and in the verifiers' copies (oldest over replicas). Refreshed every 15 minutes; "
                "alerts TrustpubKeysStale above one hour, TrustpubKeysNearStaleness above 20 hours "
                "(at 24 hours the issuer's tokens get 503).",
                "s",
                query("max by (issuer) (trustpub_jwks_keyset_age_seconds)", "jwks {{issuer}}", "A"),
                query("max by (issuer) (trustpub_verifier_keyset_age_seconds)", "verifiers {{issuer}}", "B"),
            )
        )
        .with_panel(
            series(
                "Key set refreshes by result",
                "ok (new set stored), unchanged, error (issuer did not answer well), refused "
                "(answer not accepted), cooldown (asked too soon).",
                "ops",
                query(f"sum by (result) (rate(trustpub_jwks_refresh_total[{RATE}]))", "{{result}}"),
            )
        )
        .with_panel(
            series(
                "Keys held",
                "Usable keys per issuer: in the key set (jwks) and in each verifier's copy.",
                "none",
                query("max by (issuer) (trustpub_jwks_keys)", "jwks {{issuer}}", "A"),
                query("min by (issuer) (trustpub_verifier_keys)", "verifier {{issuer}}", "B"),
            )
        )
    )

    # -- registry and audit ---------------------------------------------------------------
    db = (
        db.with_row(dash.Row("Registry and audit"))
        .with_panel(
            series(
                "Replays refused",
                "Exchanges refused because the token's id was used before (invalid-reuse-token).",
                "reqps",
                query(
                    f"sum by (provider) (rate(trustpub_replays_refused_total{{{PROVIDER}}}[{RATE}]))",
                    "{{provider}}",
                ),
            )
        )
        .with_panel(
            series(
                "Publishers pinned on first use",
                "Publishers registered without numeric ids whose ids were captured from their first token.",
                "none",
                query(
                    f"sum by (provider) (increase(trustpub_publishers_pinned_total{{{PROVIDER}}}[{RATE}]))",
                    "{{provider}}",
                ),
            )
        )
        .with_panel(
            series(
                "Audit backlog",
                "Exchange events waiting in JetStream for the registry to store them. Alert: "
                "TrustpubAuditBacklogHigh above 1000.",
                "none",
                query("max(trustpub_audit_backlog)", "waiting"),
            )
        )
        .with_panel(
            series(
                "Events stream fill",
                "How full the JetStream events stream is, by bytes and by messages (of "
                "TRUSTPUB_EVENTS_MAX_BYTES, TRUSTPUB_EVENTS_MAX_MSGS): past a bound the oldest events "
                "are discarded, read or not. Alert: TrustpubEventsStreamNearBound above 80%.",
                "percentunit",
                query(stream_fill(), "{{bound}}"),
            )
        )
        .with_panel(
            series(
                "Audit rows written",
                "Rows added to the audit trail per second, by kind.",
                "ops",
                query(f"sum by (kind) (rate(trustpub_audit_events_total[{RATE}]))", "{{kind}}", "A"),
                query(
                    f"sum(increase(trustpub_events_unpublished_total[{RATE}]))",
                    "events lost (unpublished)",
                    "B",
                ),
            )
        )
    )

    # -- the upload gate (README, "The upload gate") ----------------------------------
    return (
        db.with_row(dash.Row("Uploads through the gate"))
        .with_panel(
            series(
                "Uploads / s by outcome",
                "Uploads the gate answered: accepted (in the index, recorded), refused by the gate "
                "(by code), refused by the index, unavailable (503).",
                "ops",
                query(
                    f"sum by (outcome, code) (rate(trustpub_gate_uploads_total[{RATE}]))",
                    "{{outcome}} {{code}}",
                ),
            )
        )
        .with_panel(
            series(
                "Upload bytes / s and uploads in flight",
                "Bytes of accepted files per second, and uploads being streamed to the index now.",
                "Bps",
                query(f"sum(rate(trustpub_gate_upload_bytes_total[{RATE}]))", "bytes/s", "A"),
                query("sum(trustpub_gate_uploads_inflight)", "in flight", "B"),
            )
        )
        .with_panel(
            series(
                "Upload duration p50 / p99",
                "Time from an upload's request to its answer (the file's size and the client's "
                "speed dominate).",
                "s",
                query(quantile(0.5, "trustpub_gate_upload_duration_seconds"), "p50", "A"),
                query(quantile(0.99, "trustpub_gate_upload_duration_seconds"), "p99", "B"),
            )
        )
        .with_panel(
            single(
                "Uploads without provenance",
                "Files the index accepted that the registry did not record (last 24 h). Alert: "
                "TrustpubUploadsUnrecorded.",
                "none",
                "sum(increase(trustpub_gate_unrecorded_total[24h])) or vector(0)",
                thresholds((None, "green"), (1, "red")),
            )
        )
    )


def render() -> str:
    """The dashboard as Grafana's JSON model (stable: sorted keys, two-space indent)."""
    board = build().build()
    # Grafana keys panel state (links, edits) by id: number them in reading order.
    for number, panel in enumerate(board.panels or [], start=1):
        panel.id_val = number
    return json.dumps(board, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
