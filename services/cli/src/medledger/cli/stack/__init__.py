"""Launchers for the real servers of the local stack: one implementation, used by
``medledger dev`` and by the test fixtures in ``medledger.testkit``."""

from medledger.cli.stack.mongo import MongoServer
from medledger.cli.stack.probes import Health
from medledger.cli.stack.process import ComponentStartError, PortBusyError, StackError
from medledger.cli.stack.services import ServiceServer, StackEndpoints, service_env
from medledger.cli.stack.triton import TritonServer
from medledger.cli.stack.vault import DevVault, PersistentVault, VaultServer

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
