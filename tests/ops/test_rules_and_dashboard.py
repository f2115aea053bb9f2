"""Prometheus rules (promtool check and unit tests), the generated dashboard, and the
metrics reference: every name the rules and the dashboard use is documented, and every
documented metric is really registered by a service (the live test then proves each query
returns data)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.support.ops import (
    ALERT_FORM,
    DASHBOARD_JSON,
    REPO,
    RULES,
    RULES_TEST,
    documented_metrics,
    metric_names,
    need_binary,
    need_module,
    rules,
)

PLANNED = {"trustpub_pending_publishers_converted_total"}


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD_JSON.read_text())
    return [
        (panel["title"], target["expr"]) for panel in board["panels"] for target in panel.get("targets", [])
    ]


def test_promtool_check_rules():
    promtool = need_binary("promtool")
    done = subprocess.run(  # noqa: S603  (promtool from PATH)
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_test_rules():
    promtool = need_binary("promtool")
    done = subprocess.run(  # noqa: S603  (promtool from PATH)
        [promtool, "test", "rules", str(RULES_TEST)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_tested_and_has_the_checkable_form():
    yaml = need_module("yaml")
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    alerts = [r for r in rules() if "alert" in r]
    assert {
        "TrustpubExchangeErrorRatioHigh",
        "TrustpubExchangeLatencyHigh",
        "TrustpubKeysStale",
        "TrustpubNoVerifierReplicas",
        "TrustpubAuditBacklogHigh",
    } <= {a["alert"] for a in alerts}
    for alert in alerts:
        assert alert["alert"] in tested, f"{alert['alert']} never fires in rules_test.yml"
        assert ALERT_FORM.match(alert["expr"].strip()), alert["expr"]
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"]
    for rule in rules():
        if "record" in rule:
            assert re.fullmatch(r"trustpub:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_dashboard_json_is_generated_from_code():
    module = need_module("deploy.dashboards.exchange_flow")
    assert DASHBOARD_JSON.read_text() == module.render(), "run `make dashboards` and commit the result"


def test_dashboard_shows_the_flow():
    board = json.loads(DASHBOARD_JSON.read_text())
    titles = [p["title"] for p in board["panels"]]
    for wanted in (
        "Exchanges / s",
        "Errors by code",
        "p99 latency per stage",
        "Ready replicas per service",
        "Key set age",
    ):
        assert wanted in titles
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    stages = " ".join(expr for title, expr in dashboard_queries() if "latency per stage" in title)
    for stage in ("token.verify", "publisher.match", "token.mint", "trustpub_exchange_duration_seconds"):
        assert stage in stages
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]


def test_every_metric_used_is_documented_and_every_documented_one_exists():
    documented = documented_metrics()
    used: set[str] = set()
    for _, expr in dashboard_queries():
        used |= metric_names(expr)
    for rule in rules():
        used |= metric_names(rule["expr"])
    assert used <= documented, f"undocumented: {sorted(used - documented)}"
    assert not used & PLANNED

    # Each documented (not planned) metric is registered somewhere in the code, by name.
    sources = "".join(p.read_text() for root in ("libs", "services") for p in (REPO / root).rglob("*.py"))
    for name in documented - PLANNED:
        assert f'"{name}"' in sources or f"{name} =" in sources, f"{name} is documented but not in the code"
    # ... and every metric the code registers is documented.
    registered = set(re.findall(r'"(trustpub_[a-z0-9_]+)"', sources))
    assert registered <= documented, f"document these in docs/metrics.md: {sorted(registered - documented)}"
    # ... and the list is covered.
    for name in (
        "trustpub_exchange_requests_total",
        "trustpub_exchange_duration_seconds",
        "trustpub_verify_duration_seconds",
        "trustpub_match_duration_seconds",
        "trustpub_nats_endpoint_duration_seconds",
        "trustpub_jwks_keyset_age_seconds",
        "trustpub_jwks_refresh_total",
        "trustpub_replays_refused_total",
        "trustpub_audit_backlog",
    ):
        assert name in documented


def test_rules_file_is_the_one_the_dev_prometheus_mounts():
    kustomization = (REPO / "deploy" / "prometheus" / "kustomization.yaml").read_text()
    assert "- rules.yml" in kustomization
    infra = (REPO / "k8s" / "infra" / "prometheus" / "kustomization.yaml").read_text()
    assert "../../../deploy/prometheus" in infra
    assert Path(REPO / "k8s" / "infra" / "prometheus" / "prometheus.yml").exists()
