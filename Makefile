# specrec: two commands do everything.
#   make demo   set up .venv and run the platform end to end on the shipped dataset
#   make test   set up .venv and run the test suite
# Set-up is idempotent: the install stamp is named by a hash of the requirement files, so a second
# run installs nothing unless the pins changed.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
DEMO_REQUESTS ?= 50
MAKE_START := $(shell date +%s)
VENV := .venv
BIN := $(VENV)/bin
REQS := requirements/constraints.txt requirements/base.txt requirements/dev.txt pyproject.toml
REQS_HASH := $(shell cat $(REQS) | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQS_HASH)

# Every tool's telemetry off; model hubs offline (nothing here downloads weights at run time).
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export FEAST_USAGE := False
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GIT_PYTHON_REFRESH := quiet
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help setup system-deps services services-stop demo test test-embedded test-production test-fast lint mlflow-ui flows clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): $(REQS)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@echo "installing torch (CPU build) first, then the pinned dependencies (requirements/constraints.txt)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0 -c requirements/constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt \
		-r requirements/base.txt -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP) ## create .venv and install everything (idempotent)

# Servers the tests start on loopback (Redis for the production profile's online store), from Debian's
# packages; installed only when missing, and only when we may (root).
SYSTEM_PACKAGES := redis-server postgresql
system-deps: ## install Debian packages the tests need (redis-server, postgresql) when missing
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || command -v $$p >/dev/null \
		|| missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing$$missing (Debian packages)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else echo "warning:$$missing not installed and not root: tests that need it fail in CI, skip locally"; fi; \
	fi

# The production profile's servers for development: Redis and PostgreSQL on loopback, data under .services/.
services: $(STAMP) system-deps ## start local Redis + PostgreSQL (production profile); prints the env to export
	$(BIN)/python -m specrec.services start

services-stop: $(STAMP) ## stop what make services started
	$(BIN)/python -m specrec.services stop

# A demo step: print its title, run it, and on failure stop with the step's name.
define step
	@echo; echo "== $(1) =="
	@$(2) || { echo; echo "make demo: step '$(1)' failed (its output is above); fix it and run make demo again"; exit 1; }
endef

demo: $(STAMP) ## run the platform end to end on the shipped dataset (about 15 minutes on 2 cores)
	@echo "make demo: started $$(date -u -d @$(MAKE_START) +%H:%M:%S) UTC (set-up included)"
	$(call step,1/7 data and model pipeline: dvc repro (ingest -> prepare -> split -> train_fm -> evaluate_fm; item_text_embed -> codebook),dvc repro)
	@echo "  data/ingested/ canonical events (data/quarantine/: rejected rows with a reason); data/prepared/ id maps"
	@echo "  and sequences; data/split/ history / replay / leave-one-out; data/models/fm/ the FM (specrec-fm@champion);"
	@echo "  data/models/codebook/ the RQ-VAE (specrec-codebook@champion); data/metrics/ stage metrics"
	$(call step,2/7 stage metrics (dvc metrics show) and the replay clock,dvc metrics show && specrec clock show)
	$(call step,3/7 thin scorer distilled from the FM at the first cycle (Prefect flow train_scorer),specrec scorer train --as-of first)
	$(call step,4/7 Feast apply (online store data/feast/online_store.db),specrec nearline apply)
	$(call step,5/7 replay: run_cycle for cycles 1-2 (LoRA -> codebook -> speculator -> bundle -> item stats -> user state -> precompute) and each next cadence's events as requests to the real scorer,specrec replay --cycles 2 --requests $(DEMO_REQUESTS))
	$(call step,6/7 the online scorer on loopback: real HTTP requests against the serving bundle,specrec serve-check --requests 50)
	$(call step,7/7 report: HTML with plots from the MLflow store,specrec report)
	@echo
	@echo "make demo: done in $$(( $$(date +%s) - $(MAKE_START) )) s. Where to look:"
	@echo "  report       the HTML path printed above (also in MLflow experiment 'report')"
	@echo "  MLflow UI    make mlflow-ui, then http://127.0.0.1:5000 (experiments fm-train, lora-finetune, replay, ...)"
	@echo "  Prefect UI   make flows, then http://127.0.0.1:4200 (every flow as a scheduled deployment)"
	@echo "  serve        specrec serve (http://127.0.0.1:8000/docs)"

# `make test` runs the whole suite on the embedded profile and every integration test a second time on
# the production profile (throw-away PostgreSQL + Redis, fresh databases per test project). The two
# passes run side by side: most of their time is spent waiting for servers and subprocesses, so together
# they take little more than the longer one on two cores. Each pass's output is printed when it ends
# (make --output-sync); `make test-embedded` or `make test-production` runs one of them.
PRODUCTION_TESTS ?= tests/integration

test: $(STAMP) system-deps ## lint, then the whole suite (embedded) and the integration tests (production) side by side
	$(BIN)/ruff check specrec models flows benchmarks tests
	$(MAKE) --no-print-directory -j2 --output-sync=target test-embedded test-production

test-embedded: $(STAMP) ## the whole suite on the embedded profile
	$(BIN)/python -m pytest -q -ra -p no:cacheprovider --durations=15

test-production: $(STAMP) system-deps ## integration tests on the production profile (throw-away PostgreSQL + Redis)
	SPECREC_PROFILE=production $(BIN)/python -m pytest -q -ra -p no:cacheprovider --durations=15 $(PRODUCTION_TESTS)

test-fast: $(STAMP) ## unit tests only
	$(BIN)/python -m pytest -q -ra tests/unit

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check specrec models flows benchmarks tests
	$(BIN)/mypy

mlflow-ui: $(STAMP) ## MLflow UI on http://127.0.0.1:5000 over the project's store
	bash mlflow/server.sh

# The Prefect server keeps its database, profiles and log under .prefect/ (git-ignored), not ~/.prefect.
PREFECT_PORT ?= 4200
flows: $(STAMP) ## Prefect server + UI on http://127.0.0.1:4200 serving every flow's deployment (Ctrl-C stops both)
	PREFECT_HOME=$(CURDIR)/.prefect PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api \
		$(BIN)/python -m flows.deploy --server --port $(PREFECT_PORT) --home $(CURDIR)/.prefect

clean: ## remove pipeline outputs (keeps .venv and the MLflow store)
	rm -rf data/ingested data/prepared data/split data/quarantine
