# trustpub: every entry point is a target here; `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install up demo test lint format bench faults clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv and install pinned dependencies (constraints.txt)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "trustpub needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,test]'
	@touch $(STAMP)

up: install ## Run the whole stack (NATS with TLS and per-service users, PostgreSQL, 6 services, dev issuer, pypiserver behind the upload gate) with the demos; Ctrl-C stops it
	$(BIN)/python -m deploy.devstack.up

demo: install ## Like `up`, but stop everything after the demo exchange
	$(BIN)/python -m deploy.devstack.up --exit-after-demo

test: install ## Run the test suite (starts its own NATS, authenticated and TLS; its own PostgreSQL unless TRUSTPUB_TEST_DATABASE_URL is set)
	$(BIN)/python -m pytest

lint: install ## ruff (lint and format check), mypy --strict, and the import layers (lint-imports)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: install ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install ## Benchmark mint-token at 1 and 32 in flight (exchanges/s, p50, p99, errors)
	$(BIN)/python -m bench.exchange

.PHONY: soak
soak: install ## Whole stack for 10 min at half its measured peak, open loop: errors, p50/p99 per minute, every process's memory, flat or not (SOAK_ARGS="--duration 60")
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

faults: install ## Fault suite under load (150 exchanges/s; kill, stop, drain each part, lock used_tokens): what clients saw, what was lost
	$(BIN)/python -m bench.faults

clean: ## Remove .run/ (local NATS and PostgreSQL data, keys); keeps .venv
	rm -rf .run

# -- operating it: Kubernetes, Tilt, Prometheus (docs/metrics.md, README "Operating trustpub") --
.PHONY: ops-tools dashboards up-prometheus
OPS_STAMP := $(VENV)/.ops-stamp

ops-tools: $(OPS_STAMP) ## Install the ops tools: the `ops` extra (kubectl, kubernetes-validate, ...) and prometheus/promtool (apt)
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; \
	  else \
	    echo "prometheus and promtool come from Debian's prometheus package: sudo apt-get install prometheus" >&2; exit 1; \
	  fi; }

$(OPS_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,test,ops]'
	@touch $(OPS_STAMP)

dashboards: $(OPS_STAMP) ## Regenerate deploy/dashboards/exchange-flow.json from deploy/dashboards/exchange_flow.py
	$(BIN)/python -m deploy.dashboards.exchange_flow > deploy/dashboards/exchange-flow.json

up-prometheus: install ## Like `up`, plus a real Prometheus scraping every service (http://127.0.0.1:9090; needs make ops-tools)
	$(BIN)/python -m deploy.devstack.up --prometheus
