"""The record service's ``IngestHl7V2``, called as each facility's own client.

Each facility has a token source that signs RFC 7523 client assertions with the facility
client's private key (as ``medledger token`` does) and exchanges them with identity; the
record service then writes under that client's organisation. Every failure becomes a
:class:`~medledger.mllp.domain.outcome.Refused` naming the status, never an exception: the
sender gets an acknowledgement whatever happens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import grpc

from medledger.api.common.v1 import purpose_pb2
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.common.channels import create_channel
from medledger.common.config import ServiceSettings
from medledger.common.errors import MedledgerError, Unavailable, from_rpc_error
from medledger.common.keyfiles import ClientKey
from medledger.common.service_tokens import DEFAULT_TOKEN_ENDPOINT, ClientKeyTokenSource
from medledger.mllp.domain.facilities import Facility
from medledger.mllp.domain.outcome import (
    Ingested,
    IngestIssue,
    IngestResult,
    IssueSeverity,
    Refused,
)

log = logging.getLogger("medledger.mllp")

_SEVERITIES = {
    record_pb2.ISSUE_SEVERITY_FATAL: IssueSeverity.FATAL,
    record_pb2.ISSUE_SEVERITY_ERROR: IssueSeverity.ERROR,
    record_pb2.ISSUE_SEVERITY_WARNING: IssueSeverity.WARNING,
    record_pb2.ISSUE_SEVERITY_INFORMATION: IssueSeverity.INFORMATION,
}


def ingested(reply: record_pb2.IngestHl7V2Response) -> Ingested:
    return Ingested(
        message_type=reply.message_type,
        issues=tuple(
            IngestIssue(
                # An unspecified severity is taken as an error: never accept on a doubt.
                severity=_SEVERITIES.get(issue.severity, IssueSeverity.ERROR),
                code=issue.code,
                location=issue.location,
                diagnostics=issue.diagnostics,
            )
            for issue in reply.issues
        ),
        written=len(reply.written),
    )


def refused(error: MedledgerError) -> Refused:
    return Refused(
        status=error.code.name,
        reason=error.reason,
        violations=tuple((v.field, v.description) for v in error.violations),
    )


class RecordIngest:
    """Calls ``IngestHl7V2`` on the record service at ``record_address``."""

    def __init__(
        self,
        record_address: str,
        identity_address: str,
        settings: ServiceSettings,
        keys: Mapping[str, ClientKey],
        *,
        purpose: purpose_pb2.PurposeOfUse.ValueType,
        timeout_seconds: float,
        token_endpoint: str = DEFAULT_TOKEN_ENDPOINT,
    ) -> None:
        """keys: each facility's client key, by facility id."""
        self._channel = create_channel(record_address, settings)
        self._stub: record_pb2_grpc.RecordServiceAsyncStub = record_pb2_grpc.RecordServiceStub(
            self._channel
        )
        self._identity_address = identity_address
        self._settings = settings
        self._keys = dict(keys)
        self._purpose = purpose
        self._timeout = timeout_seconds
        self._token_endpoint = token_endpoint
        self._tokens: dict[str, ClientKeyTokenSource] = {}

    def _token_source(self, facility: Facility) -> ClientKeyTokenSource:
        source = self._tokens.get(facility.facility_id)
        if source is None:
            source = ClientKeyTokenSource(
                self._keys[facility.facility_id],
                facility.client_id,
                self._identity_address,
                self._settings,
                scope=facility.scope,
                token_endpoint=self._token_endpoint,
            )
            self._tokens[facility.facility_id] = source
        return source

    async def __call__(self, facility: Facility, message: str) -> IngestResult:
        try:
            token = await self._token_source(facility)()
        except Unavailable:
            return Refused("UNAVAILABLE", "IDENTITY_UNAVAILABLE")
        except MedledgerError as error:
            log.warning(
                "identity refused a facility's client",
                extra={"facility": facility.facility_id, "client_id": facility.client_id},
            )
            return Refused("UNAUTHENTICATED", error.reason)
        # No idempotency key: the record service derives it from MSH-3, MSH-4 and MSH-10 (the
        # same for the command line's `medledger ingest hl7`), so an engine's resend through
        # either path writes nothing new.
        request = record_pb2.IngestHl7V2Request(message=message, purpose=self._purpose)
        try:
            reply = await self._stub.IngestHl7V2(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            return refused(from_rpc_error(error))
        return ingested(reply)

    async def aclose(self) -> None:
        for source in self._tokens.values():
            await source.aclose()
        await self._channel.close(None)
