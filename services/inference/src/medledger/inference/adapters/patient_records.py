"""The record service, as a prediction reads a patient's record and writes its result back,
always with the caller's own token: the reads are decided by CheckAccess and ledgered as the
caller's (denied without consent, as a direct read would be), and the RiskAssessment and its
Provenance are the caller's writes.

Refusals come back as the record service said them (PERMISSION_DENIED, NOT_FOUND with its
reason, ...); the record service not answering is UNAVAILABLE.

Only the Observations a model can use are read: the search names the model's codes (FHIR's
comma-separated OR, at most :data:`CODES_PER_SEARCH` per search), so a patient with years of
other results costs a prediction what their relevant ones do, not their whole record.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Sequence
from typing import Any, Final, TypeVar

import grpc

from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.common.channels import create_channel
from medledger.common.config import ServiceSettings
from medledger.common.errors import MedledgerError, Unavailable, from_rpc_error
from medledger.inference.domain.features import Coding
from medledger.inference.domain.predictor import Caller, NewEntry, RecordRead, WrittenResource

DEPENDENCY: Final = "record"
# Codes one search lists at most (the record's most values in one parameter).
CODES_PER_SEARCH: Final = 64
PAGE_SIZE: Final = 1000
# A patient's Observations read for one prediction, at most (pages of PAGE_SIZE).
MAX_PAGES: Final = 20
T = TypeVar("T")


def _escape(part: str) -> str:
    """A system or code in a FHIR search value: ``\\``, ``|``, ``,`` and ``$`` escaped."""
    return "".join("\\" + c if c in "\\|,$" else c for c in part)


def _metadata(caller: Caller) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {caller.token}")]


class RecordClient:
    def __init__(self, address: str, settings: ServiceSettings, *, timeout: float = 10.0) -> None:
        self._channel = create_channel(address, settings)
        self._stub: record_pb2_grpc.RecordServiceAsyncStub = record_pb2_grpc.RecordServiceStub(
            self._channel
        )
        self._timeout = timeout

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(DEPENDENCY) from error
            decoded: MedledgerError = from_rpc_error(error)
            raise decoded from error

    async def read(
        self, caller: Caller, patient_id: str, codes: Sequence[Coding], *, with_patient: bool
    ) -> RecordRead:
        """The patient's Observations with any of ``codes`` (every page), and their Patient
        resource when asked, read at once."""
        reading = asyncio.gather(
            *(
                self._observations(caller, patient_id, codes[n : n + CODES_PER_SEARCH])
                for n in range(0, len(codes), CODES_PER_SEARCH)
            )
        )
        patient = None
        if with_patient:
            patient, found = await asyncio.gather(self._patient(caller, patient_id), reading)
        else:
            found = await reading
        return RecordRead(patient, [o for chunk in found for o in chunk])

    async def _patient(self, caller: Caller, patient_id: str) -> dict[str, Any]:
        reply = await self._call(
            self._stub.GetResource(
                record_pb2.GetResourceRequest(
                    resource_type="Patient",
                    id=patient_id,
                    purpose=caller.purpose,
                    break_glass_reason=caller.break_glass_reason,
                ),
                metadata=_metadata(caller),
                timeout=self._timeout,
            )
        )
        document: dict[str, Any] = json.loads(reply.resource.resource_json)
        return document

    async def _observations(
        self, caller: Caller, patient_id: str, codes: Sequence[Coding]
    ) -> list[dict[str, Any]]:
        any_code = ",".join(f"{_escape(c.system)}|{_escape(c.code)}" for c in codes)
        observations: list[dict[str, Any]] = []
        token = ""
        for _ in range(MAX_PAGES):
            page = await self._call(
                self._stub.SearchResources(
                    record_pb2.SearchResourcesRequest(
                        resource_type="Observation",
                        params=[
                            record_pb2.SearchParam(name="patient", value=patient_id),
                            record_pb2.SearchParam(name="code", value=any_code),
                        ],
                        page_size=PAGE_SIZE,
                        page_token=token,
                        purpose=caller.purpose,
                        break_glass_reason=caller.break_glass_reason,
                    ),
                    metadata=_metadata(caller),
                    timeout=self._timeout,
                )
            )
            observations += [json.loads(r.resource_json) for r in page.resources]
            token = page.next_page_token
            if not token:
                break
        return observations

    async def create_all(
        self, caller: Caller, entries: Sequence[NewEntry], idempotency_key: str
    ) -> list[WrittenResource]:
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    **({"fullUrl": e.full_url} if e.full_url is not None else {}),
                    "resource": e.resource,
                    "request": {"method": "POST", "url": e.resource["resourceType"]},
                }
                for e in entries
            ],
        }
        reply = await self._call(
            self._stub.ExecuteBundle(
                record_pb2.ExecuteBundleRequest(
                    bundle_json=json.dumps(bundle, separators=(",", ":")),
                    purpose=caller.purpose,
                    idempotency_key=idempotency_key,
                    break_glass_reason=caller.break_glass_reason,
                ),
                metadata=_metadata(caller),
                timeout=self._timeout,
            )
        )
        return [WrittenResource(r.id, r.version) for r in reply.resources]

    async def aclose(self) -> None:
        await self._channel.close(None)
