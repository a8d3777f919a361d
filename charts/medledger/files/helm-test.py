"""`helm test`: every medledger service answers SERVING on grpc.health.v1, Triton (when the
chart runs it) is ready, and a client's credential gets a token from identity that the ledger
accepts (GetCheckpoint). Run by a service image's Python (medledger.common and the generated
stubs are in every one); mutual TLS from the MEDLEDGER_TLS_* variables, as the services use.

    MEDLEDGER_HELM_TEST_SERVICES     name=host:port,... (identity and ledger among them)
    MEDLEDGER_HELM_TEST_CLIENT_ID    a client registered with the scope below
    MEDLEDGER_HELM_TEST_CLIENT_KEY   its private JWK (a file)
    MEDLEDGER_HELM_TEST_SCOPE        default: ledger.read
    MEDLEDGER_HELM_TEST_TRITON_URL   Triton's HTTP endpoint (http://host:port); empty: none

Prints one line per check; exits 1 when any failed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.channels import create_channel
from medledger.common.config import ServiceSettings
from medledger.common.keyfiles import load_private_key
from medledger.common.service_tokens import ClientKeyTokenSource

TIMEOUT_SECONDS = 10


def say(ok: bool, what: str) -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    return ok


async def health(name: str, address: str, settings: ServiceSettings) -> bool:
    channel = create_channel(address, settings)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_SECONDS)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return say(reply.status == health_pb2.HealthCheckResponse.SERVING, f"{name} {status}")
    except grpc.aio.AioRpcError as error:
        return say(False, f"{name} health: {error.code().name} {error.details()}")
    finally:
        await channel.close(None)


def triton_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=TIMEOUT_SECONDS) as answer:  # noqa: S310 (the chart's own http URL)
            return say(answer.status == 200, f"triton ready ({answer.status})")
    except OSError as error:
        return say(False, f"triton not ready: {error}")


async def authenticated_call(services: dict[str, str], settings: ServiceSettings) -> bool:
    client_id = os.environ["MEDLEDGER_HELM_TEST_CLIENT_ID"]
    key = load_private_key(Path(os.environ["MEDLEDGER_HELM_TEST_CLIENT_KEY"]))
    scope = os.environ.get("MEDLEDGER_HELM_TEST_SCOPE") or "ledger.read"
    tokens = ClientKeyTokenSource(key, client_id, services["identity"], settings, scope=scope)
    channel = create_channel(services["ledger"], settings)
    try:
        token = await tokens()
        say(True, f"identity issued {client_id} a token for {scope}")
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        reply = await stub.GetCheckpoint(
            ledger_pb2.GetCheckpointRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=TIMEOUT_SECONDS,
        )
        origin = reply.checkpoint.split(b"\n", 1)[0].decode("utf-8", "replace")
        return say(bool(reply.checkpoint), f"ledger GetCheckpoint with the token: {origin}")
    except grpc.aio.AioRpcError as error:
        return say(False, f"ledger GetCheckpoint: {error.code().name} {error.details()}")
    except Exception as error:  # noqa: BLE001 (any failure is this check's answer)
        return say(False, f"authenticated call: {type(error).__name__}: {error}")
    finally:
        await channel.close(None)
        await tokens.aclose()


async def main() -> int:
    settings = ServiceSettings()
    services = dict(
        entry.split("=", 1)
        for entry in os.environ["MEDLEDGER_HELM_TEST_SERVICES"].split(",")
        if entry
    )
    results = [await health(name, address, settings) for name, address in services.items()]
    if triton := os.environ.get("MEDLEDGER_HELM_TEST_TRITON_URL"):
        results.append(triton_ready(triton))
    results.append(await authenticated_call(services, settings))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
