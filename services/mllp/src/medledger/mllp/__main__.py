"""``python -m medledger.mllp``: runs the MLLP listener until SIGTERM.

It is not a gRPC server, so it has no grpc.health.v1: it is ready when its port accepts
connections, which it logs once (``mllp listener ready``); the chart's probes and the local
stack check the port.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from medledger.common.config import ConfigError, PeerSettings, load_settings
from medledger.common.telemetry import configure_logging, setup_telemetry
from medledger.mllp.config import MllpSettings
from medledger.mllp.runtime import from_settings

log = logging.getLogger("medledger.mllp")


async def serve() -> None:
    settings, peers = load_settings(MllpSettings, PeerSettings)
    logging.getLogger().setLevel(settings.log_level)
    runtime = from_settings(settings, peers)  # inside the loop: its channels bind to it
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await runtime.stop()


def main() -> None:
    configure_logging("mllp")
    telemetry = setup_telemetry("mllp")
    try:
        asyncio.run(serve())
    except ConfigError as exc:
        print(f"medledger-mllp: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        raise SystemExit(1) from None
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    main()
