"""``python -m medledger.witness``: runs the witness service until SIGTERM."""

from __future__ import annotations

from medledger.api.witness.v1 import witness_pb2, witness_pb2_grpc
from medledger.common.config import MongoSettings, VaultSettings, load_settings
from medledger.common.mongo import create_mongo_client
from medledger.common.server import run_service
from medledger.common.service import Servicer, ServiceRuntime
from medledger.common.vault import VaultTransit
from medledger.witness.config import WitnessSettings
from medledger.witness.server import WitnessServiceServicer


def build() -> ServiceRuntime:
    settings, mongo, vault = load_settings(WitnessSettings, MongoSettings, VaultSettings)
    return ServiceRuntime(
        name="witness",
        settings=settings,
        servicers=[
            Servicer(
                WitnessServiceServicer(),
                witness_pb2_grpc.add_WitnessServiceServicer_to_server,
                witness_pb2.DESCRIPTOR.services_by_name["WitnessService"],
            )
        ],
        mongo=create_mongo_client(mongo, app_name="medledger-witness"),
        vault=VaultTransit(vault),
    )


def main() -> None:
    run_service("witness", build)


if __name__ == "__main__":
    main()
