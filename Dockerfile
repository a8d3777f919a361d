# syntax=docker/dockerfile:1
# One image recipe for every medledger service. Build from the workspace root, naming the service:
#   docker build --build-arg SERVICE=ledger -t medledger-ledger .
# SERVICE is one of identity, record, ledger, inference, witness, mllp; the image runs that
# service's console script (`medledger-<service>`). Both stages use the same base (its venv points at
# /usr/local/bin/python3.11); pin it by digest with --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ARG SERVICE
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
# Bytecode is compiled here because the runtime root filesystem is read-only; the venv is a
# plain copy (no links into the cache) with the workspace packages installed, not linked.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
RUN case "${SERVICE}" in identity|record|ledger|inference|witness|mllp) ;; \
      *) echo "build with --build-arg SERVICE=identity|record|ledger|inference|witness|mllp" >&2; exit 2;; \
    esac
WORKDIR /src
# The whole workspace: uv resolves the lock against every member's pyproject.toml.
COPY pyproject.toml uv.lock ./
COPY services ./services
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-default-groups --no-editable --package "medledger-${SERVICE}" \
 && ln -s "/app/.venv/bin/medledger-${SERVICE}" /app/.venv/bin/medledger-service

FROM ${PYTHON_IMAGE}
ARG SERVICE
LABEL org.opencontainers.image.title="medledger-${SERVICE}"
RUN groupadd --system --gid 10001 medledger \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin medledger
COPY --from=builder /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
USER 10001:10001
# Ports: identity 50051, record 50052, ledger 50053, inference 50054, witness 50055 (the chart
# sets MEDLEDGER_GRPC_PORT; MEDLEDGER_HEALTH_PORT when the health port is split off for mTLS);
# the MLLP listener 2575 (MEDLEDGER_MLLP_PORT).
EXPOSE 50051-50055 2575
ENTRYPOINT ["medledger-service"]
