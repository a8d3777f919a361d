"""The listener wired from its settings: facilities, the record service client, the server."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from medledger.common.config import PeerSettings
from medledger.mllp.adapters.listener import MllpListener, server_tls
from medledger.mllp.adapters.record import RecordIngest
from medledger.mllp.config import MllpSettings, load_facilities
from medledger.mllp.domain.exchange import Exchange
from medledger.mllp.domain.facilities import FacilityDirectory

log = logging.getLogger("medledger.mllp")
READY = "mllp listener ready"
"""The log line a supervisor (the local stack, a test) may wait for; the port then accepts."""


@dataclass
class MllpRuntime:
    settings: MllpSettings
    directory: FacilityDirectory
    ingest: RecordIngest
    listener: MllpListener

    @property
    def port(self) -> int:
        return self.listener.port

    async def start(self) -> int:
        port = await self.listener.start()
        log.info(
            READY,
            extra={
                "host": self.settings.mllp_host,
                "port": port,
                "mutual_tls": self.settings.mutual_tls,
                "facilities": [f.facility_id for f in self.directory.facilities],
            },
        )
        return port

    async def stop(self, grace: float | None = None) -> None:
        await self.listener.stop(self.settings.shutdown_grace_seconds if grace is None else grace)
        await self.ingest.aclose()
        log.info("stopped")


def from_settings(settings: MllpSettings, peers: PeerSettings) -> MllpRuntime:
    """The listener of ``settings``, handing messages to the record service at
    ``peers.record_addr`` with tokens from identity at ``peers.identity_addr``."""
    directory, keys = load_facilities(settings.mllp_facilities_file, mutual_tls=settings.mutual_tls)
    ingest = RecordIngest(
        peers.record_addr,
        peers.identity_addr,
        settings,
        keys,
        purpose=settings.purpose,
        timeout_seconds=settings.mllp_ingest_timeout_seconds,
        token_endpoint=settings.token_endpoint,
    )
    tls = None
    if settings.mutual_tls:
        assert settings.mllp_tls_cert_file
        assert settings.mllp_tls_key_file
        assert settings.mllp_tls_client_ca_file
        tls = server_tls(
            str(settings.mllp_tls_cert_file),
            str(settings.mllp_tls_key_file),
            str(settings.mllp_tls_client_ca_file),
        )
    listener = MllpListener(
        Exchange(directory, ingest),
        host=settings.mllp_host,
        port=settings.mllp_port,
        max_message_bytes=settings.mllp_max_message_bytes,
        idle_timeout=settings.mllp_idle_timeout_seconds,
        max_connections=settings.mllp_max_connections,
        tls=tls,
    )
    return MllpRuntime(settings, directory, ingest, listener)
