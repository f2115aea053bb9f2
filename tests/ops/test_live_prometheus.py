"""A real Prometheus (Debian's package) scrapes a running stack every second while it
performs exchanges; then every query of the dashboard and every rule must return data.

This is what keeps the dashboard and the rules honest: a metric renamed in a service, a
label that does not exist, a query that does not parse, all fail here.

Alert rules: an alert's expression is empty while the alert rightly does not fire, which
would prove nothing. Every alert is written `<query> <comparison> <number>` (rules.yml's
header; test_rules_and_dashboard.py enforces it), and this test evaluates
`(<query>) <comparison> bool <number>`, which returns 0 or 1 for every series the query
matches: data exactly when the alert's selectors match real series. The alerts themselves
must all be inactive on this healthy stack.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from deploy.devstack.prometheus import PrometheusServer, serve_stack
from tests.support.live import Live, exchange, finite, live_stack, upload
from tests.support.ops import ALERT_FORM, DASHBOARD_JSON, need_binary, need_module, rules

# Grafana's variables, as a person viewing the dashboard would have them: a window of
# several scrapes (scrapes are 1 s apart here) and every provider.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$provider": ".*"}


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD_JSON.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unknown variable in {expr}"
            out.append((panel["title"], expr))
    return out


async def wait_for(prom: PrometheusServer, expr: str, at_least: float, timeout: float = 60) -> float:
    """Until ``expr`` is at least ``at_least``; its value then."""
    deadline = asyncio.get_running_loop().time() + timeout
    value = None
    while asyncio.get_running_loop().time() < deadline:
        result = await asyncio.to_thread(prom.query, expr)
        value = float(result[0]["value"][1]) if result else None
        if value is not None and value >= at_least:
            return value
        await asyncio.sleep(0.5)
    pytest.fail(f"{expr} = {value}, expected at least {at_least} within {timeout} s")


async def scraped_since(prom: PrometheusServer, since: float) -> float:
    """Until every target has been scraped after ``since`` (unix seconds); the time of the
    latest of those scrapes. Scrapes come when Prometheus gets to them, not on the second,
    on a loaded machine."""
    await wait_for(prom, 'min(timestamp(up{job="trustpub"}))', since + 0.001)
    return await wait_for(prom, 'max(timestamp(up{job="trustpub"}))', since + 0.001)


ROUNDS = 3
PER_ROUND = 7


async def run_exchanges(live: Live, prom: PrometheusServer) -> int:
    """Mints, and the refusals the dashboard breaks down: a replay, an expired token, a wrong
    workflow. In rounds with a scrape between them: rate() sees an increase only between two
    samples, and a series is born with the value of its first scrape."""
    async with aiohttp.ClientSession() as session:
        for round_ in range(ROUNDS):
            if round_:
                await scraped_since(prom, time.time())
            minted = [await exchange(session, live.mint_url, live.token()) for _ in range(3)]
            assert [r.status for r in minted] == [200] * 3
            replayed = live.token()
            assert (await exchange(session, live.mint_url, replayed)).status == 200
            replay = await exchange(session, live.mint_url, replayed)
            expired = await exchange(session, live.mint_url, live.token(now=int(time.time()) - 7200))
            other = await exchange(session, live.mint_url, live.token(workflow="other.yml"))
            assert (replay.status, replay.code) == (422, "invalid-reuse-token")
            assert (expired.status, expired.code) == (422, "invalid-token")
            assert (other.status, other.code) == (422, "invalid-publisher")
            # An upload through the gate, and one it refuses (another project).
            assert await upload(session, live, f"1.0.{round_}") == 200
            assert await upload(session, live, "1.0.0", project="someone-elses") == 403
    return ROUNDS * PER_ROUND


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_every_dashboard_query_and_rule_returns_data(tmp_path, bus, database_url):
    need_binary("prometheus")
    need_module("yaml")
    async with live_stack(tmp_path, bus, database_url, gate=True) as live:
        prom = await asyncio.to_thread(
            serve_stack,
            live.stack,
            tmp_path / "prometheus",
            scrape_interval="1s",
            log_file=tmp_path / "prometheus.log",
        )
        try:
            # Every process is a healthy target.
            await wait_for(prom, 'count(up{job="trustpub"} == 1)', len(live.stack.procs))
            total = await run_exchanges(live, prom)
            await wait_for(prom, "sum(trustpub_exchange_requests_total)", total)
            # The refusals reach the audit trail through JetStream and the registry.
            await wait_for(prom, 'sum(trustpub_audit_events_total{kind="exchange.failed"})', 3 * ROUNDS)
            # Two more scrapes of every target, so that rate() has two samples of every series
            # born late.
            await scraped_since(prom, await scraped_since(prom, time.time()))

            empty = []
            for title, expr in dashboard_queries():
                if not finite(await asyncio.to_thread(prom.query, expr)):
                    empty.append(f"dashboard {title!r}: {expr}")
            for rule in rules():
                if "record" in rule:
                    checks = [(f"recording rule {rule['record']}", e) for e in (rule["expr"], rule["record"])]
                else:
                    form = ALERT_FORM.match(rule["expr"].strip())
                    assert form, rule["expr"]
                    checks = [(f"alert {rule['alert']}", f"({form['lhs']}) {form['op']} bool {form['num']}")]
                for what, expr in checks:
                    if not finite(await asyncio.to_thread(prom.query, expr)):
                        empty.append(f"{what}: {expr}")
            assert not empty, "no data for:\n" + "\n".join(empty)

            # Prometheus loaded the rules, evaluates them without error, and nothing fires.
            groups = (await asyncio.to_thread(prom.api, "rules"))["groups"]
            loaded = [r for g in groups for r in g["rules"]]
            assert len(loaded) == len(rules())
            assert all(r["health"] == "ok" for r in loaded), [r for r in loaded if r["health"] != "ok"]
            active = (await asyncio.to_thread(prom.api, "alerts"))["alerts"]
            assert active == []
        finally:
            await asyncio.to_thread(prom.stop)
