"""gRPC servicer of the record service: converts messages to domain calls and back
(:class:`~medledger.record.domain.resources.ResourceService` does the work).

Every RPC of the v1 contract is declared; those that answer UNIMPLEMENTED (ingestion,
duplicates) are filled by later issues.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.common.errors import FieldViolation, InvalidArgument
from medledger.common.interceptors import authenticated_principal
from medledger.common.policy import ResourceAccess, Scopes, ServiceAccess
from medledger.common.scopes import ADMIN, AUDIT_READ
from medledger.record.domain.access_report import (
    AccessReports,
    ReportEntries,
    ReportHeader,
    ReportPart,
)
from medledger.record.domain.bulk_writes import BulkWrites
from medledger.record.domain.csv_ingest import CsvLabIngestion, CsvProgress
from medledger.record.domain.csv_labs import LabMapping, RowIssue
from medledger.record.domain.duplicates import DuplicatePatients, LinkRequest
from medledger.record.domain.hl7_ingest import Hl7Ingestion, Hl7Outcome
from medledger.record.domain.hl7_v2 import Hl7Issue
from medledger.record.domain.patient_rights import PatientRights
from medledger.record.domain.peers import LoggedEntry, Requester
from medledger.record.domain.ports import StoredVersion
from medledger.record.domain.record_audit import RecordAudit
from medledger.record.domain.resources import ResourceService
from medledger.record.domain.transaction_bundles import TransactionBundles

Context = grpc.aio.ServicerContext[Any, Any]
PENDING = "not implemented yet"
DRAIN_SECONDS: Final = 10.0

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
        # The same log, complete up to a checkpoint (docs/access-report.md).
        _METHODS["GetAccessReport"]: ResourceAccess("AuditEvent", "rs"),
        # ADT messages create and update Patients and Encounters, ORU ones Observations.
        _METHODS["IngestHl7V2"]: ResourceAccess("*", "cu"),
        _METHODS["IngestHl7V2Batch"]: ResourceAccess("*", "cu"),
        _METHODS["IngestCsvLabResults"]: ResourceAccess("Observation", "c"),
        _METHODS["IngestCsvLabResultsStream"]: ResourceAccess("Observation", "c"),
        _METHODS["FindDuplicatePatients"]: ResourceAccess("Patient", "s"),
        # Two new Patient versions, written as UpdateResource writes them.
        _METHODS["LinkPatients"]: ResourceAccess("Patient", "u"),
        # Creates and updates (POST and PUT entries); each type is checked by CheckAccess.
        _METHODS["ExecuteBundle"]: ResourceAccess("*", "cu"),
        _METHODS["AuditRecords"]: Scopes(ADMIN, AUDIT_READ),
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


def _opening(opening: LoggedEntry) -> record_pb2.EntryOpening:
    return record_pb2.EntryOpening(
        salt=opening.salt,
        subject_pseudonym=opening.pseudonym,
        resource_type=opening.resource_type,
        resource_id=opening.resource_id,
        resource_version=opening.resource_version,
        patient_actor=opening.patient_actor,
        subject_salt=opening.subject_salt,
    )


def _report_part(part: ReportPart) -> record_pb2.GetAccessReportResponse:
    if isinstance(part, ReportHeader):
        return record_pb2.GetAccessReportResponse(
            header=record_pb2.AccessReportHeader(
                checkpoint=part.checkpoint,
                subject_pseudonym=part.pseudonym,
                first_index=part.first_index,
                base_checkpoint=part.base_checkpoint,
                base_border=list(part.base_border),
                scan_key=part.scan_key,
            )
        )
    if isinstance(part, ReportEntries):
        entries = record_pb2.AccessReportEntries()
        for found in part.entries:
            listed = entries.entries.add(
                leaf_index=found.leaf_index, found_by_opening=found.found_by_opening
            )
            if found.opening is not None:
                listed.opening.CopyFrom(_opening(found.opening))
        return record_pb2.GetAccessReportResponse(entries=entries)
    return record_pb2.GetAccessReportResponse(
        leaves=record_pb2.AccessReportLeaves(
            start_index=part.start_index, entry_bytes=list(part.leaves)
        )
    )


_SEVERITY: Final = {
    "fatal": record_pb2.ISSUE_SEVERITY_FATAL,
    "error": record_pb2.ISSUE_SEVERITY_ERROR,
    "warning": record_pb2.ISSUE_SEVERITY_WARNING,
}


def _hl7_issue(issue: Hl7Issue) -> record_pb2.Issue:
    return record_pb2.Issue(
        severity=_SEVERITY[issue.severity],
        code=issue.code,
        location=issue.location,
        diagnostics=issue.diagnostics,
    )


def _hl7_response(outcome: Hl7Outcome) -> record_pb2.IngestHl7V2Response:
    return record_pb2.IngestHl7V2Response(
        message_type=outcome.message_type,
        issues=[_hl7_issue(i) for i in outcome.issues],
        written=[_written(v) for v in outcome.written],
        control_id=outcome.control_id,
    )


def _written(version: StoredVersion) -> record_pb2.WrittenResource:
    return record_pb2.WrittenResource(
        resource_type=version.ref.resource_type,
        id=version.ref.resource_id,
        version=version.ref.version,
        receipt=ledger_pb2.Receipt.FromString(version.receipt),
    )


def _row_issue(issue: RowIssue) -> record_pb2.Issue:
    return record_pb2.Issue(
        severity=record_pb2.ISSUE_SEVERITY_FATAL
        if issue.fatal
        else record_pb2.ISSUE_SEVERITY_ERROR,
        code=issue.code.value,
        location=issue.location,
        diagnostics=issue.diagnostics,
    )


def _lab_mapping(mapping: record_pb2.CsvLabMapping) -> LabMapping:
    return LabMapping.of(
        patient_column=mapping.patient_column,
        patient_identifier_system=mapping.patient_identifier_system,
        code_column=mapping.code_column,
        value_column=mapping.value_column,
        unit_column=mapping.unit_column,
        effective_column=mapping.effective_column,
    )


def _csv_progress(progress: CsvProgress) -> record_pb2.IngestCsvLabResultsStreamResponse:
    return record_pb2.IngestCsvLabResultsStreamResponse(
        rows_read=progress.rows_read,
        rows_accepted=progress.rows_accepted,
        issues=[_row_issue(i) for i in progress.issues],
        written=[_written(v) for v in progress.written],
        done=progress.done,
    )


async def _csv_pieces(
    first: record_pb2.IngestCsvLabResultsStreamRequest,
    rest: AsyncIterator[record_pb2.IngestCsvLabResultsStreamRequest],
) -> AsyncIterator[bytes]:
    """The CSV bytes of a stream's messages; only the first may name the mapping, key and
    purpose."""
    if first.csv:
        yield first.csv
    async for message in rest:
        if message.HasField("mapping") or message.idempotency_key or message.purpose:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "mapping",
                        "only the stream's first message names the mapping, key and purpose",
                    )
                ]
            )
        yield message.csv


async def _drain(messages: AsyncIterator[Any]) -> None:
    """Reads and drops what is left of a request stream, for at most
    :data:`DRAIN_SECONDS`, before the call ends with an error: grpc's asyncio client reports
    a status sent before it half-closed as INTERNAL "Internal error from Core" instead of
    what the server said, when its next write fails (grpc/grpc#36066)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in messages:
                pass


@dataclass(frozen=True)
class Ingestion:
    """The bulk, one-ledger-step writers behind the ingestion RPCs."""

    writes: BulkWrites
    hl7: Hl7Ingestion
    csv: CsvLabIngestion
    bundles: TransactionBundles


class RecordServiceServicer(record_pb2_grpc.RecordServiceServicer):
    def __init__(
        self,
        resources: ResourceService,
        rights: PatientRights,
        audit: RecordAudit,
        reports: AccessReports,
        *,
        ingestion: Ingestion,
        duplicates: DuplicatePatients,
    ) -> None:
        self._resources = resources
        self._rights = rights
        self._audit = audit
        self._reports = reports
        self._ingestion = ingestion
        self._duplicates = duplicates

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
        export = await self._rights.export(
            _requester(request.purpose, request.break_glass_reason),
            request.patient_id,
            pseudonymise=request.pseudonymise,
        )
        return record_pb2.ExportPatientResponse(
            bundle_json=export.bundle_json,
            receipts=[ledger_pb2.Receipt.FromString(r) for r in export.receipts],
            export_receipt=ledger_pb2.Receipt.FromString(export.export_receipt),
        )

    async def ErasePatient(
        self, request: record_pb2.ErasePatientRequest, context: Context
    ) -> record_pb2.ErasePatientResponse:
        erasure = await self._rights.erase(
            _requester(request.purpose, ""),
            request.patient_id,
            request.reason,
        )
        return record_pb2.ErasePatientResponse(
            erased_versions=erasure.erased_versions,
            receipt=ledger_pb2.Receipt.FromString(erasure.receipt),
        )

    async def GetAccessLog(
        self, request: record_pb2.GetAccessLogRequest, context: Context
    ) -> record_pb2.GetAccessLogResponse:
        page = await self._rights.access_log(
            _requester(request.purpose, ""),
            request.patient_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        response = record_pb2.GetAccessLogResponse(next_page_token=page.next_page_token)
        for found in page.items:
            response.entries.append(
                ledger_pb2.IndexedEntry(
                    leaf_index=found.leaf_index,
                    entry_bytes=found.entry_bytes,
                    entry=ledger_pb2.LedgerEntry.FromString(found.entry_bytes),
                )
            )
            opening = found.opening
            response.openings.append(
                record_pb2.EntryOpening(
                    salt=opening.salt,
                    subject_pseudonym=opening.pseudonym,
                    resource_type=opening.resource_type,
                    resource_id=opening.resource_id,
                    resource_version=opening.resource_version,
                    patient_actor=opening.patient_actor,
                    subject_salt=opening.subject_salt,
                )
            )
        return response

    async def GetAccessReport(
        self, request: record_pb2.GetAccessReportRequest, context: Context
    ) -> AsyncIterator[record_pb2.GetAccessReportResponse]:
        parts = self._reports.report(
            _requester(request.purpose, ""), request.patient_id, request.from_size
        )
        async for part in parts:
            yield _report_part(part)

    async def ExecuteBundle(
        self, request: record_pb2.ExecuteBundleRequest, context: Context
    ) -> record_pb2.ExecuteBundleResponse:
        stored = await self._ingestion.bundles.execute(
            _requester(request.purpose, request.break_glass_reason),
            request.bundle_json,
            request.idempotency_key,
        )
        return record_pb2.ExecuteBundleResponse(resources=[_stored(v) for v in stored])

    async def IngestHl7V2(
        self, request: record_pb2.IngestHl7V2Request, context: Context
    ) -> record_pb2.IngestHl7V2Response:
        outcome = await self._ingestion.hl7.ingest(
            _requester(request.purpose, ""), request.message, request.idempotency_key
        )
        return _hl7_response(outcome)

    async def IngestHl7V2Batch(
        self, request: record_pb2.IngestHl7V2BatchRequest, context: Context
    ) -> record_pb2.IngestHl7V2BatchResponse:
        outcome = await self._ingestion.hl7.ingest_batch(
            _requester(request.purpose, ""), request.batch
        )
        return record_pb2.IngestHl7V2BatchResponse(
            issues=[_hl7_issue(i) for i in outcome.issues],
            messages=[_hl7_response(m) for m in outcome.messages],
        )

    async def IngestCsvLabResults(
        self, request: record_pb2.IngestCsvLabResultsRequest, context: Context
    ) -> record_pb2.IngestCsvLabResultsResponse:
        outcome = await self._ingestion.csv.ingest_text(
            _requester(request.purpose, ""),
            _lab_mapping(request.mapping),
            request.csv,
            request.idempotency_key,
        )
        return record_pb2.IngestCsvLabResultsResponse(
            rows_total=outcome.rows_read,
            rows_accepted=outcome.rows_accepted,
            issues=[_row_issue(i) for i in outcome.issues],
            written=[_written(v) for v in outcome.written],
        )

    async def IngestCsvLabResultsStream(
        self,
        request_iterator: AsyncIterator[record_pb2.IngestCsvLabResultsStreamRequest],
        context: Context,
    ) -> AsyncIterator[record_pb2.IngestCsvLabResultsStreamResponse]:
        messages = aiter(request_iterator)
        try:
            first = await anext(messages, None)
            if first is None:
                raise InvalidArgument([FieldViolation("purpose", "the stream sent no message")])
            progress = self._ingestion.csv.ingest_stream(
                _requester(first.purpose, ""),
                _lab_mapping(first.mapping),
                _csv_pieces(first, messages),
                first.idempotency_key,
            )
            async for each in progress:
                yield _csv_progress(each)
        except Exception:
            await _drain(messages)
            raise

    async def FindDuplicatePatients(
        self, request: record_pb2.FindDuplicatePatientsRequest, context: Context
    ) -> record_pb2.FindDuplicatePatientsResponse:
        page = await self._duplicates.finder.find(
            _requester(request.purpose, ""),
            request.min_score,
            page_size=request.page_size,
            page_token=request.page_token,
            patient_id=request.patient_id,
        )
        return record_pb2.FindDuplicatePatientsResponse(
            candidates=[
                record_pb2.DuplicateCandidate(
                    first_patient_id=pair.first,
                    second_patient_id=pair.second,
                    score=pair.score,
                    matched_fields=pair.matched_fields,
                )
                for pair in page.items
            ],
            next_page_token=page.next_page_token,
        )

    async def LinkPatients(
        self, request: record_pb2.LinkPatientsRequest, context: Context
    ) -> record_pb2.LinkPatientsResponse:
        source, target = await self._duplicates.linker.link(
            _requester(request.purpose, ""),
            LinkRequest(
                source_id=request.source_patient_id,
                target_id=request.target_patient_id,
                source_version=request.source_expected_version,
                target_version=request.target_expected_version,
                idempotency_key=request.idempotency_key,
            ),
        )
        return record_pb2.LinkPatientsResponse(source=_stored(source), target=_stored(target))

    async def AuditRecords(
        self, request: record_pb2.AuditRecordsRequest, context: Context
    ) -> record_pb2.AuditRecordsResponse:
        page = await self._audit.page(page_size=request.page_size, page_token=request.page_token)
        return record_pb2.AuditRecordsResponse(
            checked_versions=page.checked,
            findings=[
                record_pb2.AuditFinding(
                    resource_type=f.resource_type,
                    id=f.resource_id,
                    version=f.version,
                    check=f.check,
                    detail=f.detail,
                )
                for f in page.findings
            ],
            next_page_token=page.next_page_token,
        )
