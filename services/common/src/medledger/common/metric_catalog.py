"""Every metric the services emit: its OpenTelemetry name, unit, kind and attributes, what an
SRE reads from it, and the Prometheus series it appears as.

This is the one list. The instruments are created from it (:mod:`medledger.common.metrics`),
the Grafana dashboards and PrometheusRule alerts of the Helm chart name only series listed
here, and ``tests/trace`` scrapes the running services to prove each one is really emitted.

Prometheus names follow OpenTelemetry's Prometheus compatibility rules, as the
``opentelemetry-exporter-prometheus`` reader (``MEDLEDGER_METRICS_PORT``) and the Collector's
Prometheus exporter apply them: dots become underscores, the unit is appended as a word
(``ms`` → ``_milliseconds``, ``s`` → ``_seconds``; a ``{annotation}`` unit adds nothing), a
counter ends in ``_total``, and a histogram is three series, ``_bucket`` (with ``le``),
``_sum`` and ``_count``. Attribute keys become labels the same way (``rpc.grpc.status_code``
→ ``rpc_grpc_status_code``). Every series also carries ``service_name`` (the process's
``service.name``: identity, record, ledger, inference, witness-a, ...), besides the scrape's
own ``job``/``pod`` labels and the ``otel_scope_*`` labels the exporter adds. Each process
serves them on ``MEDLEDGER_METRICS_PORT`` (the chart: 9464, container port ``metrics``).

Attribute values are bounded sets (RPC names, status codes, outcomes, reason codes, model
names, witness names): never a patient, a caller or a record id.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Final


class Kind(Enum):
    """The OpenTelemetry instrument kind."""

    HISTOGRAM = "histogram"
    COUNTER = "counter"
    OBSERVABLE_GAUGE = "observable_gauge"


# OpenTelemetry's unit-to-word mapping for the units used here (the exporter's table).
_UNIT_WORDS: Final = MappingProxyType({"ms": "milliseconds", "s": "seconds", "1": ""})


@dataclass(frozen=True)
class MetricSpec:
    """One instrument: how it is created and how it reads."""

    name: str
    """The OpenTelemetry instrument name."""
    kind: Kind
    unit: str
    """A UCUM unit: ``ms``, ``s``, or ``{thing}`` for a count of things."""
    description: str
    """The instrument's description (exported as the Prometheus HELP text)."""
    reading: str
    """What an SRE reads from it, and what to alert on."""
    attributes: tuple[str, ...]
    """The attribute keys every measurement carries (bounded values only)."""
    services: tuple[str, ...]
    """The services that emit it (stack names: identity, record, ledger, inference, witness)."""
    buckets: tuple[float, ...] = ()
    """Histogram bucket boundaries, when the SDK's default (suited to milliseconds) is not."""

    @property
    def prometheus_name(self) -> str:
        """The base Prometheus name: sanitised, unit word appended, ``_total`` on counters."""
        base = re.sub(r"[^a-zA-Z0-9:]+", "_", self.name)
        unit = re.sub(r"\{.*\}", "", self.unit)
        word = _UNIT_WORDS.get(unit, unit)
        if word and not base.endswith(f"_{word}"):
            base = f"{base}_{word}"
        if self.kind is Kind.COUNTER:
            base = f"{base}_total"
        return base

    @property
    def prometheus_series(self) -> tuple[str, ...]:
        """Every series name a scrape shows for it."""
        base = self.prometheus_name
        if self.kind is Kind.HISTOGRAM:
            return (f"{base}_bucket", f"{base}_sum", f"{base}_count")
        return (base,)

    @property
    def prometheus_labels(self) -> tuple[str, ...]:
        """The labels its attributes become."""
        return tuple(re.sub(r"[^a-zA-Z0-9]+", "_", key) for key in self.attributes)


RPC_SERVER_DURATION: Final = MetricSpec(
    name="medledger.rpc.server.duration",
    kind=Kind.HISTOGRAM,
    unit="ms",
    description="Time a gRPC server took to answer a call, by service, method and status.",
    reading=(
        "RED per RPC: rate of _count is the request rate; the share of _count whose "
        "rpc_grpc_status_code is not OK (0) is the error ratio (alert on UNAVAILABLE, "
        "INTERNAL, DEADLINE_EXCEEDED; INVALID_ARGUMENT, NOT_FOUND and PERMISSION_DENIED are "
        "callers' mistakes or refusals); histogram_quantile over _bucket is the latency. "
        "A streaming call is timed until its last message."
    ),
    attributes=("rpc.service", "rpc.method", "rpc.grpc.status_code"),
    services=("identity", "record", "ledger", "inference", "witness"),
)

LEDGER_APPEND_DURATION: Final = MetricSpec(
    name="medledger.ledger.append.duration",
    kind=Kind.HISTOGRAM,
    unit="ms",
    description=(
        "Time from an append reaching the sequencer until its entry is durable in a signed "
        "checkpoint (or the append failed), by outcome."
    ),
    reading=(
        "How long writers wait for the log: every audited read and write of a record waits "
        "for this. p99 rising means the durable step (Mongo commit, Vault signature) is slow "
        "or batches are queueing; outcome=error means appends fail (Vault or Mongo down, "
        "the sequencer lease lost). Alert on p99 above a few hundred ms."
    ),
    attributes=("outcome",),
    services=("ledger",),
)

LEDGER_BATCH_SIZE: Final = MetricSpec(
    name="medledger.ledger.batch.size",
    kind=Kind.HISTOGRAM,
    unit="{entry}",
    description="New entries integrated by one durable step of the sequencer.",
    reading=(
        "How much the sequencer batches: near 1 at low load; growing toward the batch "
        "limit (256) means appends arrive faster than one commit takes, i.e. the ledger is "
        "near its throughput limit. Rate of _count is durable steps per second."
    ),
    attributes=(),
    services=("ledger",),
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000),
)

LEDGER_TREE_SIZE: Final = MetricSpec(
    name="medledger.ledger.tree.size",
    kind=Kind.OBSERVABLE_GAUGE,
    unit="{entry}",
    description="Entries in the log as of the newest checkpoint this replica sequenced.",
    reading=(
        "The log's growth: deriv() is entries per second. It must never go down (a smaller "
        "tree is a fork or a restored backup). Only the replica holding the sequencer lease "
        "reports it, from its first checkpoint on."
    ),
    attributes=(),
    services=("ledger",),
)

LEDGER_CHECKPOINT_AGE: Final = MetricSpec(
    name="medledger.ledger.checkpoint.age",
    kind=Kind.OBSERVABLE_GAUGE,
    unit="s",
    description="Seconds since the newest checkpoint was signed and committed.",
    reading=(
        "How stale the log's head is. The ledger checkpoints only when entries arrive, so "
        "the age grows on an idle ledger: alert when it is high WHILE Append calls are "
        "being made (rate of the ledger's Append RPCs > 0) — then the sequencer is stuck. "
        "Reported by the replica holding the sequencer lease."
    ),
    attributes=(),
    services=("ledger",),
)

LEDGER_WITNESS_LAG: Final = MetricSpec(
    name="medledger.ledger.witness.lag",
    kind=Kind.OBSERVABLE_GAUGE,
    unit="s",
    description=(
        "How much older the newest checkpoint this witness cosigned is than the newest "
        "checkpoint, by witness address."
    ),
    reading=(
        "0 when the witness keeps up. It grows while a witness is down, refuses "
        "(e.g. it saw a fork), or returns cosignatures that do not verify; receipts then "
        "carry fewer cosignatures and verifiers requiring a quorum may reject new "
        "checkpoints. Alert when it stays above a minute. A witness that has cosigned "
        "nothing since the ledger started counts from the first checkpoint it was sent."
    ),
    attributes=("witness",),
    services=("ledger",),
)

VAULT_REQUEST_DURATION: Final = MetricSpec(
    name="medledger.vault.request.duration",
    kind=Kind.HISTOGRAM,
    unit="ms",
    description="Time of one call to Vault's transit engine, by operation and outcome.",
    reading=(
        "Every signature, token, data key and record key goes through Vault: its latency "
        "adds to appends, token issuance and record reads. operation is the transit call "
        "(sign, verify, encrypt, decrypt, generate_data_key, public_keys, rotate, "
        "read_secret, create_secret, health_check); outcome is ok, not_found (no such key), "
        "refused (Vault said no: policy), unavailable (unreachable, sealed, timed out) or "
        "error (Vault rejected the request)."
    ),
    attributes=("operation", "outcome"),
    services=("identity", "record", "ledger", "inference", "witness"),
)

VAULT_REQUEST_ERRORS: Final = MetricSpec(
    name="medledger.vault.request.errors",
    kind=Kind.COUNTER,
    unit="{error}",
    description="Calls to Vault that did not succeed, by operation and outcome.",
    reading=(
        "Any rate of outcome=unavailable means Vault is down or sealed for this service "
        "(signing and decryption stop: page). outcome=refused or not_found means a policy "
        "or key problem (a deployment mistake)."
    ),
    attributes=("operation", "outcome"),
    services=("identity", "record", "ledger", "inference", "witness"),
)

TRITON_REQUEST_DURATION: Final = MetricSpec(
    name="medledger.triton.request.duration",
    kind=Kind.HISTOGRAM,
    unit="ms",
    description="Time of one inference request to Triton, by model and outcome.",
    reading=(
        "The model server's share of a Predict: compare with the inference service's "
        "Predict latency (medledger_rpc_server_duration). outcome=error means Triton "
        "failed or was unreachable (Predict answers UNAVAILABLE)."
    ),
    attributes=("model", "outcome"),
    services=("inference",),
)

ACCESS_DECISIONS: Final = MetricSpec(
    name="medledger.access.decisions",
    kind=Kind.COUNTER,
    unit="{decision}",
    description="CheckAccess decisions, by decision (permit or deny) and reason code.",
    reading=(
        "Who is being refused and why: a jump in decision=deny with reason NO_CONSENT or "
        "PURPOSE_NOT_ALLOWED after a release is a broken client or policy; break-glass "
        "permits (reason BREAK_GLASS) should be rare and each one is audited."
    ),
    attributes=("decision", "reason"),
    services=("identity",),
)

INGEST_REJECTS: Final = MetricSpec(
    name="medledger.ingest.rejects",
    kind=Kind.COUNTER,
    unit="{message}",
    description="Inbound HL7 v2 messages or CSV rows refused by ingestion, by source and reason.",
    reading=(
        "A feed that starts failing: a rising rate for one source and reason is usually an "
        "interface change at the sending system. The reason is the rejection's code, never "
        "the message's content."
    ),
    attributes=("source", "reason"),
    services=("record",),
)

CATALOG: Final[tuple[MetricSpec, ...]] = (
    RPC_SERVER_DURATION,
    LEDGER_APPEND_DURATION,
    LEDGER_BATCH_SIZE,
    LEDGER_TREE_SIZE,
    LEDGER_CHECKPOINT_AGE,
    LEDGER_WITNESS_LAG,
    VAULT_REQUEST_DURATION,
    VAULT_REQUEST_ERRORS,
    TRITON_REQUEST_DURATION,
    ACCESS_DECISIONS,
    INGEST_REJECTS,
)

BY_NAME: Final[Mapping[str, MetricSpec]] = MappingProxyType({m.name: m for m in CATALOG})


def prometheus_series() -> frozenset[str]:
    """Every Prometheus series name the services can emit (what a dashboard may query)."""
    return frozenset(series for metric in CATALOG for series in metric.prometheus_series)
