"""The benchmark's patients: each a Patient and the seven Observations the
``diabetes-progression`` model needs (the test suite's measurements, varied per patient),
created through the record service's API, many patients at once.

Nothing is skipped: every create is a real ``CreateResource`` (validation, encryption,
CheckAccess, its ledger append), with the caller's token, as a hospital app would write them.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import grpc

from medledger.api.common.v1 import purpose_pb2
from medledger.api.record.v1 import record_pb2, record_pb2_grpc

LOINC: Final = "http://loinc.org"
UCUM: Final = "http://unitsofmeasure.org"
TREAT: Final = purpose_pb2.PURPOSE_OF_USE_TREAT
# A diabetes patient's measurements: (LOINC, typical value, UCUM unit).
MEASURED: Final = (
    ("39156-5", 31.2, "kg/m2"),
    ("8478-0", 101.0, "mm[Hg]"),
    ("2093-3", 221.0, "mg/dL"),
    ("13457-7", 139.6, "mg/dL"),
    ("2085-9", 41.0, "mg/dL"),
    ("2571-8", 2.1, "mmol/L"),  # triglycerides in SI units: converted, then ln
    ("2345-7", 7.4, "mmol/L"),  # glucose in SI units: converted to mg/dL
)
RESOURCES_PER_PATIENT: Final = 1 + len(MEASURED)
AT_ONCE: Final = 8  # patients created at once (each: 7 Observations at once)
RETRIES: Final = 4

Stub: TypeAlias = "record_pb2_grpc.RecordServiceAsyncStub"  # in the .pyi only


@dataclass(frozen=True)
class Created:
    patients: list[str]
    seconds: float
    failed: Counter[str]  # patients left incomplete, by the failed create's error


def patient(rng: random.Random) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "gender": rng.choice(("male", "female")),
        "birthDate": f"{rng.randrange(1940, 1995)}-{rng.randrange(1, 13):02d}-14",
    }


def observation(rng: random.Random, patient_id: str, code: str, typical: float, unit: str) -> Any:
    value = round(typical * rng.uniform(0.9, 1.1), 1 if typical > 10 else 2)
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": f"2026-{rng.randrange(1, 10):02d}-{rng.randrange(1, 28):02d}"
        "T08:00:00Z",
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


async def create_patients(
    stub: Callable[[], Awaitable[Stub]],
    count: int,
    *,
    progress: Callable[[int, float], None] | None = None,
) -> Created:
    """``count`` patients, :data:`AT_ONCE` at a time; ``stub()`` gives a stub with a fresh
    token (asked for again every 200 patients: the platform's tokens live five minutes)."""
    rng = random.Random(13)
    started = time.perf_counter()
    created: list[str] = []
    failed: Counter[str] = Counter()
    limit = asyncio.Semaphore(AT_ONCE)
    current = await stub()

    async def create(resource: Any) -> str:
        """One create, retried (same idempotency key) while the record service answers
        UNAVAILABLE (its dependencies, busy at the start of a run on two cores)."""
        request = record_pb2.CreateResourceRequest(
            resource_json=json.dumps(resource), purpose=TREAT, idempotency_key=uuid.uuid4().hex
        )
        for attempt in range(RETRIES):
            try:
                reply = await current.CreateResource(request)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == RETRIES - 1:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
            else:
                return reply.resource.id
        raise AssertionError("unreachable")

    async def one(document: dict[str, Any], seed: int) -> None:
        own = random.Random(seed)
        async with limit:
            try:
                patient_id = await create(document)
                await asyncio.gather(*(create(observation(own, patient_id, *m)) for m in MEASURED))
            except grpc.aio.AioRpcError as error:  # counted and reported; the run goes on
                failed[f"{error.code().name}: {error.details()}"[:120]] += 1
                return
            created.append(patient_id)

    for start in range(0, count, 200):
        current = await stub()
        chunk = range(start, min(count, start + 200))
        await asyncio.gather(*(one(patient(rng), rng.randrange(2**32)) for _ in chunk))
        if progress is not None:
            progress(len(created), time.perf_counter() - started)
    return Created(created, time.perf_counter() - started, failed)
