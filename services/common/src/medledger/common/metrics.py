"""The instruments of :mod:`medledger.common.metric_catalog`, created from its entries so a
name, unit or description can never drift from the catalogue.

Instruments come from the global meter provider. Created before
:func:`medledger.common.telemetry.setup_telemetry` installs it, they record nothing until it
is installed and then record into it (OpenTelemetry's proxy instruments), so modules may
create theirs at import time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Observation

from medledger.common.metric_catalog import (
    INGEST_REJECTS,
    Kind,
    MetricSpec,
)

METER_NAME: Final = "medledger"
# Reason codes are UPPER_SNAKE_CASE (as ErrorInfo reasons): a bounded set, never a value
# taken from the message being refused.
_REASON_CODE: Final = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
INGEST_SOURCES: Final = frozenset({"hl7", "csv"})

Attributes = Mapping[str, str | int]
GaugeCallback = Callable[[], Iterable[tuple[float, Attributes]]]


def _meter() -> metrics.Meter:
    return metrics.get_meter(METER_NAME)


def histogram(spec: MetricSpec) -> Histogram:
    """The histogram ``spec`` describes."""
    if spec.kind is not Kind.HISTOGRAM:
        raise ValueError(f"{spec.name} is a {spec.kind.value}, not a histogram")
    return _meter().create_histogram(
        spec.name,
        unit=spec.unit,
        description=spec.description,
        explicit_bucket_boundaries_advisory=list(spec.buckets) or None,
    )


def counter(spec: MetricSpec) -> Counter:
    """The counter ``spec`` describes."""
    if spec.kind is not Kind.COUNTER:
        raise ValueError(f"{spec.name} is a {spec.kind.value}, not a counter")
    return _meter().create_counter(spec.name, unit=spec.unit, description=spec.description)


def observable_gauge(spec: MetricSpec, read: GaugeCallback) -> None:
    """Registers the gauge ``spec`` describes; ``read`` gives its (value, attributes) pairs at
    each collection (none while there is nothing to report)."""
    if spec.kind is not Kind.OBSERVABLE_GAUGE:
        raise ValueError(f"{spec.name} is a {spec.kind.value}, not an observable gauge")

    def observe(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, dict(attributes)) for value, attributes in read()]

    _meter().create_observable_gauge(
        spec.name, callbacks=[observe], unit=spec.unit, description=spec.description
    )


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()`` reading)."""
    return (time.perf_counter() - started) * 1000


@contextmanager
def timed(instrument: Histogram, attributes: dict[str, str]) -> Iterator[dict[str, str]]:
    """Records the block's duration in ms into ``instrument`` with ``attributes``, which the
    block may complete (an outcome); ``outcome`` is ``error`` when the block raised and
    did not set one."""
    started = time.perf_counter()
    try:
        yield attributes
    except BaseException:
        attributes.setdefault("outcome", "error")
        raise
    finally:
        attributes.setdefault("outcome", "ok")
        instrument.record(elapsed_ms(started), attributes)


_ingest_rejects = counter(INGEST_REJECTS)


def ingest_rejected(source: str, reason: str, count: int = 1) -> None:
    """Counts ``count`` inbound HL7 v2 messages (``source="hl7"``) or CSV rows
    (``source="csv"``) refused for ``reason``, an UPPER_SNAKE_CASE code such as
    ``MISSING_PATIENT_ID`` (never text from the message). ValueError on anything else, so
    a label can never carry a patient's data or grow without bound."""
    if source not in INGEST_SOURCES:
        raise ValueError(f"source must be one of {sorted(INGEST_SOURCES)}")
    if not _REASON_CODE.match(reason):
        raise ValueError("reason must be an UPPER_SNAKE_CASE code")
    if count < 0:
        raise ValueError("count must not be negative")
    if count:
        _ingest_rejects.add(count, {"source": source, "reason": reason})
