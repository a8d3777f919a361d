"""``python -m medledger.record``: runs the record service until SIGTERM."""

from __future__ import annotations

from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.common.auth import require_tokens
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings, load_settings
from medledger.common.mongo import create_mongo_client
from medledger.common.server import run_service
from medledger.common.service import Servicer, ServiceRuntime
from medledger.common.vault import VaultTransit
from medledger.record.config import RecordSettings
from medledger.record.server import RecordServiceServicer


def build() -> ServiceRuntime:
    settings, mongo, vault, peers = load_settings(
        RecordSettings, MongoSettings, VaultSettings, PeerSettings
    )
    runtime = ServiceRuntime(
        name="record",
        settings=settings,
        servicers=[
            Servicer(
                RecordServiceServicer(),
                record_pb2_grpc.add_RecordServiceServicer_to_server,
                record_pb2.DESCRIPTOR.services_by_name["RecordService"],
            )
        ],
        mongo=create_mongo_client(mongo, app_name="medledger-record"),
        vault=VaultTransit(vault),
    )
    return require_tokens(runtime, peers.identity_addr)


def main() -> None:
    run_service("record", build)


if __name__ == "__main__":
    main()
