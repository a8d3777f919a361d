# medledger — the two commands a new machine needs are `make up` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: bootstrap up down status test lint typecheck protos protos-check proto-lint proto-breaking chart-check k8s ci bench clean

# Installs uv when it is missing, then the locked workspace (.venv).
bootstrap:
	@scripts/bootstrap.sh

up: bootstrap
	$(UV) run --frozen medledger dev up

down: bootstrap
	$(UV) run --frozen medledger dev down

status: bootstrap
	$(UV) run --frozen medledger dev status

test: bootstrap
	scripts/run-tests.sh

lint: bootstrap
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen lint-imports --no-cache

typecheck: bootstrap
	$(UV) run --frozen mypy

protos: bootstrap
	scripts/gen-protos.sh

protos-check: bootstrap
	scripts/gen-protos.sh --check

proto-lint: bootstrap
	cd protos && $(UV) run --frozen buf lint

proto-breaking: bootstrap
	scripts/proto-breaking.sh

chart-check: bootstrap
	scripts/chart-check.sh

k8s: bootstrap
	scripts/chart-check.sh --render-only

bench: bootstrap
	$(UV) run --frozen python -m bench.ledger
	$(UV) run --frozen python -m bench.identity

clean:
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache
