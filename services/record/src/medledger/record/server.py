"""gRPC servicer of the record service: converts messages to domain calls and back.

Every RPC of the v1 contract is declared; those that answer UNIMPLEMENTED are filled by
a later issue.
"""

from __future__ import annotations

from typing import Any, Final

import grpc

from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.common.errors import Unimplemented
from medledger.common.policy import ResourceAccess, ServiceAccess

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


class RecordServiceServicer(record_pb2_grpc.RecordServiceServicer):
    async def CreateResource(
        self, request: record_pb2.CreateResourceRequest, context: Context
    ) -> record_pb2.CreateResourceResponse:
        raise Unimplemented(PENDING)

    async def GetResource(
        self, request: record_pb2.GetResourceRequest, context: Context
    ) -> record_pb2.GetResourceResponse:
        raise Unimplemented(PENDING)

    async def UpdateResource(
        self, request: record_pb2.UpdateResourceRequest, context: Context
    ) -> record_pb2.UpdateResourceResponse:
        raise Unimplemented(PENDING)

    async def ListResourceHistory(
        self, request: record_pb2.ListResourceHistoryRequest, context: Context
    ) -> record_pb2.ListResourceHistoryResponse:
        raise Unimplemented(PENDING)

    async def SearchResources(
        self, request: record_pb2.SearchResourcesRequest, context: Context
    ) -> record_pb2.SearchResourcesResponse:
        raise Unimplemented(PENDING)

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
