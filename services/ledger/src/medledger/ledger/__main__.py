"""``python -m medledger.ledger``: runs the ledger service until SIGTERM."""

from __future__ import annotations

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.config import MongoSettings, VaultSettings, load_settings
from medledger.common.mongo import create_mongo_client
from medledger.common.server import run_service
from medledger.common.service import Servicer, ServiceRuntime
from medledger.common.vault import VaultTransit
from medledger.ledger.config import LedgerSettings
from medledger.ledger.server import LedgerServiceServicer


def build() -> ServiceRuntime:
    settings, mongo, vault = load_settings(LedgerSettings, MongoSettings, VaultSettings)
    return ServiceRuntime(
        name="ledger",
        settings=settings,
        servicers=[
            Servicer(
                LedgerServiceServicer(),
                ledger_pb2_grpc.add_LedgerServiceServicer_to_server,
                ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"],
            )
        ],
        mongo=create_mongo_client(mongo, app_name="medledger-ledger"),
        vault=VaultTransit(vault),
    )


def main() -> None:
    run_service("ledger", build)


if __name__ == "__main__":
    main()
