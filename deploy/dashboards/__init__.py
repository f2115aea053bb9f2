"""Grafana dashboards generated from code (see exchange_flow.py)."""
