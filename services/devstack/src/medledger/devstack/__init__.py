"""Launchers for the real servers of the local stack: one implementation, used by
``medledger dev`` and by the test fixtures in ``medledger.testkit``."""

from medledger.devstack.mongo import MongoServer
from medledger.devstack.probes import Health
from medledger.devstack.process import ComponentStartError, PortBusyError, StackError
from medledger.devstack.services import ServiceServer, StackEndpoints, service_env
from medledger.devstack.triton import TritonServer
from medledger.devstack.vault import DevVault, PersistentVault, VaultServer

__all__ = [
    "ComponentStartError",
    "DevVault",
    "Health",
    "MongoServer",
    "PersistentVault",
    "PortBusyError",
    "ServiceServer",
    "StackEndpoints",
    "StackError",
    "TritonServer",
    "VaultServer",
    "service_env",
]
