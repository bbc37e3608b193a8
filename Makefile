# sndw: a single-node data warehouse as an Airflow DAG package.
# Every target sets itself up: .venv with the pinned install, the embedded Airflow, and a local
# PostgreSQL warehouse when .env configures none. `make help` lists the targets.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed
BENCH_VENV := .venv-bench
BENCH := $(BENCH_VENV)/.bench-installed
ENV := . scripts/dev-env
PYTEST_ARGS ?=
# make up: local (LocalExecutor, airflow standalone) or celery (scripts/airflow-celery)
EXECUTOR ?= local

.PHONY: help venv install-dev airflow-init demo test test-fast lint up up-celery down status dw-start dw-stop dw-psql \
	run-pipeline test-dw s3-start s3-stop redis-start redis-stop \
	infra-up infra-down infra-status lock validate clean bench bench-parallel

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(RUNTIME): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	@test -x $(BIN)/uv || $(BIN)/pip install -q "uv==$(UV_VERSION)"
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@touch $@

$(DEV): $(RUNTIME) requirements-dev.lock
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements-dev.lock
	@touch $@

venv: $(RUNTIME) ## Create .venv with the pinned runtime dependencies

install-dev: $(DEV) ## Add the pinned test and lint tools

airflow-init: $(RUNTIME) ## Prepare the embedded Airflow (metadata DB, JWT secret)
	@scripts/airflow-init

demo: $(RUNTIME) airflow-init ## Create sample sources, run every sample DAG, print what was loaded
	@$(ENV) && python scripts/demo.py

# The tests start their own PostgreSQL (.local/pg-test) and Airflow home (.local/airflow-test).
test: $(DEV) lint ## Lint, then the whole test suite on a real PostgreSQL
	@SNDW_NO_DW=1 $(ENV) && python -m pytest $(PYTEST_ARGS)

test-fast: $(DEV) ## The tests without the end-to-end Airflow runs
	@SNDW_NO_DW=1 $(ENV) && python -m pytest -m "not slow" $(PYTEST_ARGS)

# The peers (pandas, dlt) and the chart (matplotlib) live in a venv of their own: installed into
# .venv, pandas made every sndw process pay pyarrow's lazy `import pandas` (0.17 s on the first
# pa.scalar), which a deployment without pandas never does. sndw's own methods run on .venv's
# interpreter (BENCH_SNDW_PYTHON). Bytecode for both venvs, as a pip-installed deployment has it.
$(BENCH): $(RUNTIME) requirements.lock requirements-bench.lock
	@test -x $(BENCH_VENV)/bin/python || $(BIN)/python -m venv $(BENCH_VENV)
	$(BIN)/uv pip install -q --python $(BENCH_VENV)/bin/python -r requirements.lock -r requirements-bench.lock
	$(BIN)/uv pip install -q --python $(BENCH_VENV)/bin/python --no-deps -e .
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib $(BENCH_VENV)/lib
	@touch $@

# Not part of `make test` (tests/test_bench_smoke.py runs the harness with tiny N instead).
bench: $(BENCH) ## Load/extract speed and memory vs psql COPY and peers (BENCH_ROWS, BENCH_ROUNDS): bench/results
	@SNDW_NO_DW=1 $(ENV) && BENCH_SNDW_PYTHON="$(CURDIR)/$(BIN)/python" $(BENCH_VENV)/bin/python -m bench.harness

bench-parallel: $(BENCH) ## A big table across workers: parallel: 2 vs 1 on 5M rows (BENCH_PARALLEL_ROWS): bench/results/parallel.json
	@SNDW_NO_DW=1 $(ENV) && BENCH_SNDW_PYTHON="$(CURDIR)/$(BIN)/python" $(BENCH_VENV)/bin/python -m bench.parallel

lint: $(DEV) ## ruff on everything, mypy on the library code
	$(BIN)/ruff check .
	$(BIN)/mypy include/sndw include/sndw_airflow

validate: $(RUNTIME) ## Check every source config in dags/sources
	@SNDW_NO_DW=1 $(ENV) && python -m sndw.cli validate dags/sources

up: $(RUNTIME) airflow-init ## Start Airflow (UI on localhost:8080) on the local warehouse; EXECUTOR=celery: 2 Celery workers, lake on local S3
	@$(ENV) && SNDW_EXECUTOR=$(EXECUTOR) scripts/airflow-up

up-celery: ## The same as make up EXECUTOR=celery
	@$(MAKE) --no-print-directory up EXECUTOR=celery

# The test servers of `make test` (tests/conftest.py stops those a session started itself).
TEST_PG_DIR := $(or $(SNDW_TEST_PG_DIR),.local/pg-test)
TEST_S3_DIR := $(or $(SNDW_TEST_S3_DIR),.local/s3-test)
TEST_REDIS_DIR := $(or $(SNDW_TEST_REDIS_DIR),.local/redis-test)

down: ## Stop Airflow standalone, the local PostgreSQL, S3 and Redis, and the tests' servers (.local/*-test) if they run
	@scripts/airflow-down
	@scripts/pg-local stop
	@scripts/s3-local stop
	@scripts/redis-local stop
	@if [ -d "$(TEST_PG_DIR)" ]; then PG_LOCAL_DIR="$(TEST_PG_DIR)" scripts/pg-local stop; fi
	@if [ -d "$(TEST_S3_DIR)" ]; then S3_LOCAL_DIR="$(TEST_S3_DIR)" scripts/s3-local stop; fi
	@if [ -d "$(TEST_REDIS_DIR)" ]; then REDIS_LOCAL_DIR="$(TEST_REDIS_DIR)" scripts/redis-local stop; fi

status: ## Show whether Airflow, the local PostgreSQL, S3 and Redis, and the tests' servers are running
	@scripts/airflow-down --status || true
	@scripts/pg-local status || true
	@scripts/s3-local status || true
	@scripts/redis-local status || true
	@if [ -d "$(TEST_PG_DIR)" ]; then printf 'tests: '; PG_LOCAL_DIR="$(TEST_PG_DIR)" scripts/pg-local status || true; fi
	@if [ -d "$(TEST_S3_DIR)" ]; then printf 'tests: '; S3_LOCAL_DIR="$(TEST_S3_DIR)" scripts/s3-local status || true; fi
	@if [ -d "$(TEST_REDIS_DIR)" ]; then printf 'tests: '; REDIS_LOCAL_DIR="$(TEST_REDIS_DIR)" scripts/redis-local status || true; fi

# The pipeline runner's targets: make run-pipeline CONFIG=examples/postgres_connector.json QUERY="SELECT 1 AS n" SOURCE=test TABLE=dw_test
CONFIG ?=
QUERY ?=
SOURCE ?=
TABLE ?=
LAKE ?= ./lake
SCHEMA ?= public
PIPELINE ?= default
# A connector reading PG_* (env_prefix: PG, as examples/postgres_connector.json) without PG_HOST set
# reads the demo's database sndw_demo_source on the warehouse's server, as the examples do.
run-pipeline: $(RUNTIME) ## Run one resource of a connector: CONFIG= QUERY= SOURCE= TABLE= [LAKE= SCHEMA= PIPELINE=]; PG_* unset: the demo source DB
	@test -n "$(CONFIG)" -a -n "$(QUERY)" -a -n "$(SOURCE)" -a -n "$(TABLE)" || \
		{ echo "usage: make run-pipeline CONFIG=<connector file> QUERY=<sql, path or glob> SOURCE=<name> TABLE=<table>" >&2; exit 2; }
	@$(ENV) && if [ -z "$${PG_HOST:-}" ] && grep -qsE '"?env_prefix"?: *"?PG"?' "$(CONFIG)"; then \
		pg_env="$$(python examples/_demo_source.py env)" && eval "$$pg_env" && \
		echo "PG_HOST is not set: reading the demo source $$PG_DATABASE on $$PG_HOST:$$PG_PORT" >&2; fi && \
		python -m etl.cli run --config "$(CONFIG)" --query "$(QUERY)" --source "$(SOURCE)" --table "$(TABLE)" \
		--lake "$(LAKE)" --schema "$(SCHEMA)" --pipeline "$(PIPELINE)"

test-dw: $(RUNTIME) ## Check that the warehouse answers (python -m etl.cli test-connection --source dw)
	@$(ENV) && python -m etl.cli test-connection --source dw

dw-start: ## Start the local PostgreSQL warehouse only
	@scripts/pg-local start

dw-stop: ## Stop the local PostgreSQL warehouse
	@scripts/pg-local stop

s3-start: $(RUNTIME) ## Start the local S3 store (SeaweedFS, bucket sndw-lake); settings: scripts/s3-local env
	@scripts/s3-local start

s3-stop: ## Stop the local S3 store
	@scripts/s3-local stop

redis-start: ## Start the local Redis (Celery broker); settings: scripts/redis-local env
	@scripts/redis-local start

redis-stop: ## Stop the local Redis
	@scripts/redis-local stop

dw-psql: ## Open psql on the warehouse
	@$(ENV) && psql "$$AIRFLOW_CONN_DW"

infra-up: ## Docker: start the warehouse and Airflow 3.3 with docker compose
	docker compose up -d --build

infra-down: ## Docker: stop them
	docker compose down

infra-status: ## Docker: show them
	docker compose ps

lock: $(RUNTIME) ## Re-resolve requirements.lock and requirements-dev.lock from the top-level pins
	$(BIN)/uv pip compile -q --python-version 3.11 requirements.txt -o requirements.lock
	$(BIN)/uv pip compile -q --python-version 3.11 requirements-dev.txt -c requirements.lock -o requirements-dev.lock

clean: ## Stop everything, then delete .venv, .venv-bench, .airflow, lake and all of .local (the local PostgreSQL, S3, Redis, test servers, demo data and connections); asks nothing!
	-scripts/airflow-down
	-scripts/pg-local destroy
	-scripts/s3-local destroy
	-scripts/redis-local destroy
	-PG_LOCAL_DIR="$(TEST_PG_DIR)" scripts/pg-local stop
	-S3_LOCAL_DIR="$(TEST_S3_DIR)" scripts/s3-local stop
	-REDIS_LOCAL_DIR="$(TEST_REDIS_DIR)" scripts/redis-local stop
	rm -rf $(VENV) $(BENCH_VENV) .airflow lake .local
