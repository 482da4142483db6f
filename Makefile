# specrec: two commands do everything.
#   make demo   set up .venv and run the platform end to end on the shipped dataset
#   make test   set up .venv and run the test suite
# Set-up is idempotent: the install stamp is named by a hash of the requirement files, so a second
# run installs nothing unless the pins changed.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
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

.PHONY: help setup system-deps demo test test-fast lint mlflow-ui flows clean

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
SYSTEM_PACKAGES := redis-server
system-deps: ## install Debian packages the tests need (redis-server) when missing
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing$$missing (Debian packages)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else echo "warning:$$missing not installed and not root: tests that need it fail in CI, skip locally"; fi; \
	fi

demo: $(STAMP) ## run the platform end to end on the shipped dataset
	@echo "== data and model pipeline: dvc repro (ingest -> prepare -> split -> train_fm -> evaluate_fm; item_text_embed -> codebook) =="
	dvc repro
	@echo
	@echo "== outputs =="
	@echo "  data/ingested/     canonical interactions and items (parquet)"
	@echo "  data/quarantine/   rows that failed validation, with a reason column"
	@echo "  data/prepared/     id maps, item/user tables, per-user sequences"
	@echo "  data/split/        history / replay (per cycle) / leave-one-out"
	@echo "  data/models/fm/    the trained FM (safetensors, config, id map); MLflow: specrec-fm@champion"
	@echo "  data/item_text/    MiniLM content embeddings; data/models/codebook/: the RQ-VAE semantic-ID codebook (specrec-codebook@champion)"
	@echo "  data/metrics/      stage metrics (dvc metrics show), per-epoch curve (dvc plots show)"
	@echo "  mlflow/mlflow.db   MLflow runs and registry: make mlflow-ui, then http://127.0.0.1:5000"
	dvc metrics show
	@echo
	specrec clock show
	@echo
	@echo "== thin scorer: distil it from the FM at the first cycle (Prefect flow train_scorer) =="
	specrec scorer train --as-of first
	@echo
	@echo "== nearline: Feast apply, then the Prefect flows for the first cycle (the bundle includes the scorer) =="
	specrec nearline apply
	specrec nearline run --as-of first
	@echo "  Feast online store: data/feast/online_store.db (feature views item_repr, item_stats, user_state)"
	@echo "  serving bundle: MLflow alias specrec-bundle@serving; runs in MLflow experiment 'materialize'"
	@echo
	@echo "== online scorer: a real HTTP server on loopback, real requests (serve it yourself: specrec serve) =="
	specrec serve-check --requests 50
	@echo
	@echo "== daily LoRA adapter for the first cycle (Prefect flow daily_lora_finetune: train, holdout gate, ADWIN) =="
	specrec lora run --as-of first
	@echo "  MLflow: experiment 'lora-finetune' (run named by as_of), registered model specrec-fm-adapter@champion"
	@echo "  drift state: data/lora/drift.json; roll the adapter back with: specrec model rollback"

test: $(STAMP) system-deps ## lint, then run the whole test suite
	$(BIN)/ruff check specrec models flows benchmarks tests
	$(BIN)/python -m pytest -q -ra

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
