"""gRPC servicer of the record service: converts messages to domain calls and back
(:class:`~medledger.record.domain.resources.ResourceService` does the work).

Every RPC of the v1 contract is declared; those that answer UNIMPLEMENTED (export, erasure,
the access log, ingestion, duplicates) are filled by later issues.
"""

from __future__ import annotations

from typing import Any, Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.common.errors import FieldViolation, InvalidArgument, Unimplemented
from medledger.common.interceptors import authenticated_principal
from medledger.common.policy import ResourceAccess, ServiceAccess
from medledger.record.domain.peers import Requester
from medledger.record.domain.ports import StoredVersion
from medledger.record.domain.resources import ResourceService

Context = grpc.aio.ServicerContext[Any, Any]
PENDING = "not implemented yet"

_SERVICE = record_pb2.DESCRIPTOR.services_by_name["RecordService"]
_METHODS = _SERVICE.methods_by_name
# Every call is decided per patient and resource by identity's CheckAccess (scopes, consent,
# purpose); here the token must at least hold a SMART scope that could grant the access.
# "*": the resource type comes with the request.
RECORD_ACCESS: Final = ServiceAccess(
    _SERVICE,
    {
        _METHODS["CreateResource"]: ResourceAccess("*", "c"),
        _METHODS["GetResource"]: ResourceAccess("*", "r"),
        _METHODS["UpdateResource"]: ResourceAccess("*", "u"),
        _METHODS["ListResourceHistory"]: ResourceAccess("*", "r"),
        _METHODS["SearchResources"]: ResourceAccess("*", "s"),
        _METHODS["ExportPatient"]: ResourceAccess("*", "rs"),
        _METHODS["ErasePatient"]: ResourceAccess("Patient", "d"),
        # The patient's access log is FHIR's AuditEvent.
        _METHODS["GetAccessLog"]: ResourceAccess("AuditEvent", "rs"),
        # ADT messages create and update Patients and Encounters, ORU ones Observations.
        _METHODS["IngestHl7V2"]: ResourceAccess("*", "cu"),
        _METHODS["IngestCsvLabResults"]: ResourceAccess("Observation", "c"),
        _METHODS["FindDuplicatePatients"]: ResourceAccess("Patient", "s"),
    },
)


def _requester(purpose: int, break_glass_reason: str) -> Requester:
    """The authenticated caller with the purpose it states (required)."""
    if purpose == purpose_pb2.PURPOSE_OF_USE_UNSPECIFIED or (
        purpose not in purpose_pb2.PurposeOfUse.values()
    ):
        raise InvalidArgument([FieldViolation("purpose", "a PurposeOfUse is required")])
    return Requester(
        authenticated_principal(), purpose_pb2.PurposeOfUse.ValueType(purpose), break_glass_reason
    )


def _stored(version: StoredVersion) -> record_pb2.StoredResource:
    updated = Timestamp()
    updated.FromDatetime(version.updated_time)
    return record_pb2.StoredResource(
        resource_type=version.ref.resource_type,
        id=version.ref.resource_id,
        version=version.ref.version,
        resource_json=version.resource_json,
        updated_time=updated,
        receipt=ledger_pb2.Receipt.FromString(version.receipt),
        commitment_salt=version.salt,
    )


class RecordServiceServicer(record_pb2_grpc.RecordServiceServicer):
    def __init__(self, resources: ResourceService) -> None:
        self._resources = resources

    async def CreateResource(
        self, request: record_pb2.CreateResourceRequest, context: Context
    ) -> record_pb2.CreateResourceResponse:
        stored = await self._resources.create(
            _requester(request.purpose, request.break_glass_reason),
            request.resource_json,
            request.idempotency_key,
        )
        return record_pb2.CreateResourceResponse(resource=_stored(stored))

    async def GetResource(
        self, request: record_pb2.GetResourceRequest, context: Context
    ) -> record_pb2.GetResourceResponse:
        stored = await self._resources.get(
            _requester(request.purpose, request.break_glass_reason),
            request.resource_type,
            request.id,
            request.version,
        )
        return record_pb2.GetResourceResponse(resource=_stored(stored))

    async def UpdateResource(
        self, request: record_pb2.UpdateResourceRequest, context: Context
    ) -> record_pb2.UpdateResourceResponse:
        stored = await self._resources.update(
            _requester(request.purpose, request.break_glass_reason),
            request.resource_json,
            request.expected_version,
            request.idempotency_key,
        )
        return record_pb2.UpdateResourceResponse(resource=_stored(stored))

    async def ListResourceHistory(
        self, request: record_pb2.ListResourceHistoryRequest, context: Context
    ) -> record_pb2.ListResourceHistoryResponse:
        page = await self._resources.history(
            _requester(request.purpose, request.break_glass_reason),
            request.resource_type,
            request.id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return record_pb2.ListResourceHistoryResponse(
            versions=[_stored(v) for v in page.items], next_page_token=page.next_page_token
        )

    async def SearchResources(
        self, request: record_pb2.SearchResourcesRequest, context: Context
    ) -> record_pb2.SearchResourcesResponse:
        page = await self._resources.search(
            _requester(request.purpose, request.break_glass_reason),
            request.resource_type,
            [(p.name, p.value) for p in request.params],
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return record_pb2.SearchResourcesResponse(
            resources=[_stored(v) for v in page.items], next_page_token=page.next_page_token
        )

    async def ExportPatient(
        self, request: record_pb2.ExportPatientRequest, context: Context
    ) -> record_pb2.ExportPatientResponse:
        raise Unimplemented(PENDING)

    async def ErasePatient(
        self, request: record_pb2.ErasePatientRequest, context: Context
    ) -> record_pb2.ErasePatientResponse:
        raise Unimplemented(PENDING)

    async def GetAccessLog(
        self, request: record_pb2.GetAccessLogRequest, context: Context
    ) -> record_pb2.GetAccessLogResponse:
        raise Unimplemented(PENDING)

    async def IngestHl7V2(
        self, request: record_pb2.IngestHl7V2Request, context: Context
    ) -> record_pb2.IngestHl7V2Response:
        raise Unimplemented(PENDING)

    async def IngestCsvLabResults(
        self, request: record_pb2.IngestCsvLabResultsRequest, context: Context
    ) -> record_pb2.IngestCsvLabResultsResponse:
        raise Unimplemented(PENDING)

    async def FindDuplicatePatients(
        self, request: record_pb2.FindDuplicatePatientsRequest, context: Context
    ) -> record_pb2.FindDuplicatePatientsResponse:
        raise Unimplemented(PENDING)
