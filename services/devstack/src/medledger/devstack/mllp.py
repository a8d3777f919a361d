"""The MLLP listener of the local stack: ``python -m medledger.mllp`` on 127.0.0.1:2575.

Without TLS (loopback only) it knows senders by MSH-4: the demo's hospital A sends as
``HOSP-A`` and writes as its own HL7 client ``hospital-a-hl7``, whose key pair the stack makes
under ``.medledger/keys/`` before the listener starts and which ``medledger demo seed``
registers with identity (messages sent before that are answered AR: resend them).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from medledger.common.keyfiles import ensure_key_pair
from medledger.devstack.paths import StackPaths, make_private_dir
from medledger.devstack.probes import Health, tcp_health
from medledger.devstack.process import ComponentStartError
from medledger.devstack.server import Server
from medledger.devstack.services import process_env

MLLP_PORT: Final = 2575


@dataclass(frozen=True)
class Hl7Feed:
    """A demo hospital's HL7 feed: the MSH-4 values its engine sends and its client."""

    client_id: str
    organization: str
    sending_facilities: tuple[str, ...]


# What a feed's client may ask for: ADT creates and updates Patients and Encounters, ORU
# creates Observations and DiagnosticReports (the listener asks for exactly these).
HL7_CLIENT_SCOPES: Final = (
    "system/Patient.cu",
    "system/Encounter.cu",
    "system/Observation.c",
    "system/DiagnosticReport.c",
)
DEMO_HL7_FEEDS: Final = (Hl7Feed("hospital-a-hl7", "hospital-a", ("HOSP-A",)),)


def facilities_document(paths: StackPaths) -> dict[str, object]:
    """The listener's facilities file for the demo feeds (their key files under
    ``paths.keys``)."""
    return {
        "facilities": [
            {
                "id": feed.organization,
                "client_id": feed.client_id,
                "key_file": str(paths.client_key(feed.client_id)),
                "sending_facilities": list(feed.sending_facilities),
                "scope": " ".join(HL7_CLIENT_SCOPES),
            }
            for feed in DEMO_HL7_FEEDS
        ]
    }


class MllpServer(Server):
    """The listener, ready when its port accepts connections."""

    component = "mllp"

    def __init__(
        self,
        *,
        port: int,
        paths: StackPaths,
        identity_addr: str,
        record_addr: str,
        log_file: Path,
        pid_file: Path | None = None,
        die_with_parent: bool = False,
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(
            log_file=log_file,
            pid_file=pid_file,
            start_timeout=start_timeout,
            die_with_parent=die_with_parent,
        )
        self.port = port
        self.paths = paths
        self.identity_addr = identity_addr
        self.record_addr = record_addr

    @property
    def ports(self) -> list[int]:
        return [self.port]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def facilities_file(self) -> Path:
        return self.paths.state("mllp") / "facilities.json"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "medledger.mllp"]

    def env(self) -> dict[str, str]:
        env = process_env(self.component)
        for name in ("MONGODB_URI", "MEDLEDGER_MONGODB_DATABASE"):
            env.pop(name, None)  # it keeps no data
        env.update(
            {
                "MEDLEDGER_MLLP_HOST": self.host,
                "MEDLEDGER_MLLP_PORT": str(self.port),
                "MEDLEDGER_MLLP_FACILITIES_FILE": str(self.facilities_file),
                "MEDLEDGER_IDENTITY_ADDR": self.identity_addr,
                "MEDLEDGER_RECORD_ADDR": self.record_addr,
            }
        )
        return env

    def prepare(self) -> None:
        """The demo feeds' key pairs (kept once made) and the facilities file."""
        try:
            found = importlib.util.find_spec("medledger.mllp.__main__") is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise ComponentStartError(
                self.component, None, f"`python -m medledger.mllp` is not available in {sys.prefix}"
            )
        for feed in DEMO_HL7_FEEDS:
            try:
                ensure_key_pair(
                    feed.client_id,
                    self.paths.client_key(feed.client_id),
                    self.paths.client_jwks(feed.client_id),
                )
            except (OSError, ValueError) as error:
                raise ComponentStartError(
                    self.component, None, f"the {feed.client_id} key pair: {error}"
                ) from error
        make_private_dir(self.facilities_file.parent)
        self.facilities_file.write_text(
            json.dumps(facilities_document(self.paths), indent=2) + "\n", encoding="utf-8"
        )

    def health(self) -> Health:
        return tcp_health(self.host, self.port)
