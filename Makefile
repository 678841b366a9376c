# The agent mesh. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STACK := $(PYTHON) infra/stack.py
PYTEST_ARGS ?=
SCENARIO ?= happy
# `make up BROKERS=3`: a KRaft cluster of three brokers instead of one (topics get three replicas,
# two in sync). The choice is passed on to the launcher, and to `down` and `status`.
ifdef BROKERS
export MESH_KAFKA_BROKERS := $(BROKERS)
endif
ANSWER ?= retry

.DEFAULT_GOAL := help
.PHONY: help venv up down status topics demo test unit lint typecheck check schemas bench chaos clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@touch $@

venv: $(BIN)/.installed ## create the Python environment with every dependency

up: venv ## start Kafka (BROKERS=3: a cluster), Postgres and Redis locally and create the topics
	$(STACK) up
	$(STACK) with-stack -- $(BIN)/mesh topics ensure

down: ## stop the local stack processes that `make up` started
	$(STACK) down

status: ## show which stack services run
	$(STACK) status

topics: venv ## create missing topics and report drift
	$(BIN)/mesh topics ensure

demo: venv ## run the onboarding demo end to end on the local stack
	$(STACK) with-stack -- $(BIN)/mesh demo --scenario $(SCENARIO) --answer $(ANSWER)

test: venv check ## lint, type-check and run every test on the real stack
	$(STACK) with-stack -- $(BIN)/pytest $(PYTEST_ARGS)

unit: venv ## run the tests that need no services
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

lint: venv ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv ## mypy --strict
	$(BIN)/mypy agents schemas topics infra bench chaos tests

check: lint typecheck ## every static gate

schemas: venv ## rewrite the .avsc files from the event models (refuses incompatible changes)
	$(BIN)/mesh schemas export

bench: venv ## benchmarks: the mesh against raw Kafka and peers (QUICK=1: about 2 minutes)
	$(STACK) with-stack -- $(BIN)/python -m bench.run $(if $(QUICK),--quick,)

chaos: venv ## goals under killed and paused agents: each completes or rolls back (GOALS, KILL_EVERY, SEED)
	$(STACK) with-stack -- $(BIN)/python -m chaos --goals $(or $(GOALS),300) --kill-every $(or $(KILL_EVERY),3) $(if $(SEED),--seed $(SEED),)

clean: ## stop the stack and delete its data and the Python environment
	$(STACK) clean
	rm -rf $(VENV) infra/kafka/target
