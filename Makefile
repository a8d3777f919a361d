# medledger — the two commands a new machine needs are `make up` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: bootstrap models up down status test lint typecheck protos protos-check proto-lint proto-breaking chart-check k8s ci bench clean

# Installs uv when it is missing, then the locked workspace (.venv).
bootstrap:
	@scripts/bootstrap.sh

# Trains the clinical risk models (fixed seeds) and writes the Triton model repositories
# build/models/local (served by the local stack) and build/models/production (the Helm
# chart's). Deterministic: files whose bytes did not change are left alone.
models: bootstrap
	$(UV) run --frozen python -m medledger.models build --out build/models

up: bootstrap models
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
	$(UV) run --frozen python -m bench.record
	$(UV) run --frozen python -m bench.inference
	$(UV) run --frozen python -m bench.ingest
	$(UV) run --frozen python -m bench.duplicates

clean:
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache
