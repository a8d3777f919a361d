"""``python -m medledger.identity``: runs the identity service until SIGTERM."""

from __future__ import annotations

from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.common.config import MongoSettings, VaultSettings, load_settings
from medledger.common.mongo import create_mongo_client
from medledger.common.server import run_service
from medledger.common.service import Servicer, ServiceRuntime
from medledger.common.vault import VaultTransit
from medledger.identity.config import IdentitySettings
from medledger.identity.server import IdentityServiceServicer


def build() -> ServiceRuntime:
    settings, mongo, vault = load_settings(IdentitySettings, MongoSettings, VaultSettings)
    return ServiceRuntime(
        name="identity",
        settings=settings,
        servicers=[
            Servicer(
                IdentityServiceServicer(),
                identity_pb2_grpc.add_IdentityServiceServicer_to_server,
                identity_pb2.DESCRIPTOR.services_by_name["IdentityService"],
            )
        ],
        mongo=create_mongo_client(mongo, app_name="medledger-identity"),
        vault=VaultTransit(vault),
    )


def main() -> None:
    run_service("identity", build)


if __name__ == "__main__":
    main()
