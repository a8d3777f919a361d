"""Identity as a real process (``python -m medledger.identity``, with the ledger it records in)
under a flood of password logins for made-up usernames from many addresses: its memory stays
within the chart's limit and a partner's client-credentials token still comes quickly.

Each login hashes with argon2id (64 MiB); before hashing had a bounded pool of its own, 60
such logins took identity from 97 to 482 MiB and a client-credentials IssueToken from 0.02 s
to 6.1 s, queued behind the hashes on the thread pool its Vault calls used too. The flood
comes through a trusted proxy (127.0.0.1) naming a different caller each time in
``x-forwarded-for``, so no per-source throttle spares the hashing: the bounds alone hold it.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from joserfc import jwt
from joserfc.jwk import OKPKey

from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.common.errors import from_rpc_error
from medledger.devstack.mongo import MongoServer
from medledger.devstack.process import free_ports
from medledger.devstack.services import (
    SERVICE_PORTS,
    IdentityBootstrap,
    ServiceServer,
    StackEndpoints,
    service_env,
)

ROOT = Path(__file__).resolve().parents[2]
ADMIN_CLIENT = "flood-admin"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_ENDPOINT = "medledger://identity/token"  # IDENTITY_TOKEN_ENDPOINT's default
FLOOD_SECONDS = 10.0
FLOODERS = 64  # logins in flight at any time
HASH_MIB = 64  # argon2id's memory cost (RFC 9106 low-memory profile)
HASH_WORKERS = 1  # IDENTITY_PASSWORD_HASH_WORKERS' default
MIB = 1024 * 1024


def chart_memory_limit() -> int:
    """identity's memory limit in charts/medledger/values.yaml, in bytes."""
    values = yaml.safe_load((ROOT / "charts/medledger/values.yaml").read_text())
    default = values["default"]["resources"]["limits"]["memory"]
    own = values["components"]["identity"].get("resources", {}).get("limits", {})
    limit = re.fullmatch(r"(\d+)(Mi|Gi)", str(own.get("memory", default)))
    assert limit is not None, "a memory limit in Mi or Gi"
    return int(limit[1]) * {"Mi": MIB, "Gi": 1024 * MIB}[limit[2]]


def memory(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in bytes."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found


class Service(ServiceServer):
    """A stack service with a database of its own and extra settings."""

    def __init__(self, name: str, endpoints: StackEndpoints, logs: Path, **extra: str) -> None:
        super().__init__(
            name, endpoints=endpoints, log_file=logs / f"{name}.log", die_with_parent=True
        )
        self.extra = extra

    def env(self) -> dict[str, str]:
        return service_env(self.component, self.endpoints) | {
            "MEDLEDGER_HEALTH_INTERVAL_SECONDS": "0.5",
            "MEDLEDGER_SHUTDOWN_GRACE_SECONDS": "1",
            **self.extra,
        }


@pytest.fixture(scope="module")
def admin_key() -> OKPKey:
    return OKPKey.generate_key("Ed25519", parameters={"kid": "flood-1"})


@pytest.fixture(scope="module")
def identity(
    mongo_server: MongoServer,
    vault_server: Any,
    tmp_path_factory: pytest.TempPathFactory,
    admin_key: OKPKey,
) -> Iterator[ServiceServer]:
    """The ledger, then identity, as processes; identity trusts 127.0.0.1 as its proxy."""
    folder = tmp_path_factory.mktemp("login-flood")
    jwks = folder / "admin.jwks.json"
    jwks.write_text(json.dumps({"keys": [admin_key.as_dict(private=False)]}))
    endpoints = StackEndpoints(
        mongo_uri=mongo_server.uri,
        vault_addr=vault_server.addr,
        vault_tokens=vault_server.service_tokens,
        triton_url="",
        service_ports=dict(zip(SERVICE_PORTS, free_ports(len(SERVICE_PORTS)), strict=True)),
        identity_bootstrap=IdentityBootstrap(ADMIN_CLIENT, jwks),
    )
    run = uuid.uuid4().hex[:8]
    ledger = Service("ledger", endpoints, folder, MEDLEDGER_MONGODB_DATABASE=f"flood_ledger_{run}")
    service = Service(
        "identity",
        endpoints,
        folder,
        MEDLEDGER_MONGODB_DATABASE=f"flood_identity_{run}",
        IDENTITY_TRUSTED_PROXIES="127.0.0.1/32",
    )
    ledger.start()
    try:
        service.start()
        try:
            yield service
        finally:
            service.stop()
    finally:
        ledger.stop()


def client_credentials(key: OKPKey) -> identity_pb2.IssueTokenRequest:
    now = int(time.time())
    claims = {
        "iss": ADMIN_CLIENT,
        "sub": ADMIN_CLIENT,
        "aud": TOKEN_ENDPOINT,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    assertion = jwt.encode({"alg": "EdDSA", "kid": key.kid}, claims, key, algorithms=["EdDSA"])
    return identity_pb2.IssueTokenRequest(
        client_credentials=identity_pb2.ClientCredentialsGrant(
            client_assertion_type=ASSERTION_TYPE, client_assertion=assertion, scope="admin"
        )
    )


async def timed_token(stub: identity_pb2_grpc.IdentityServiceAsyncStub, key: OKPKey) -> float:
    began = time.monotonic()
    await stub.IssueToken(client_credentials(key), timeout=30)
    return time.monotonic() - began


async def flood(
    stub: identity_pb2_grpc.IdentityServiceAsyncStub, stop: asyncio.Event, answers: Counter[str]
) -> None:
    """Logins for made-up names, each from another address, one after another until ``stop``."""
    while not stop.is_set():
        address = f"198.18.{answers.total() // 250 % 250}.{answers.total() % 250 + 1}"
        answers["sent"] += 1
        try:
            await stub.IssueToken(
                identity_pb2.IssueTokenRequest(
                    password=identity_pb2.PasswordGrant(
                        username=f"nobody-{uuid.uuid4().hex[:12]}", password="guess guess guess"
                    )
                ),
                metadata=[("x-forwarded-for", address)],
                # Queued logins wait for the hash pool (nice 19): on a busy machine that can
                # take long, and a client deadline here would say nothing about the service.
                timeout=180,
            )
        except grpc.aio.AioRpcError as error:
            decoded = from_rpc_error(error)
            answers[decoded.reason] += 1


async def test_a_login_flood_stays_within_memory_and_tokens_stay_fast(
    identity: ServiceServer, admin_key: OKPKey
) -> None:
    assert identity.pid is not None
    async with grpc.aio.insecure_channel(identity.address) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        for _ in range(3):  # warm: the JWKS, the ledger's lease, the dummy hash
            await timed_token(stub, admin_key)
            await asyncio.gather(
                *(
                    stub.IssueToken(
                        identity_pb2.IssueTokenRequest(
                            password=identity_pb2.PasswordGrant(username="warm", password="x")
                        ),
                        metadata=[("x-forwarded-for", f"192.0.2.{n}")],
                    )
                    for n in (1, 2)
                ),
                return_exceptions=True,
            )
        quiet = [await timed_token(stub, admin_key) for _ in range(5)]
        before = memory(identity.pid)

        stop = asyncio.Event()
        answers: Counter[str] = Counter()
        flooders = [asyncio.create_task(flood(stub, stop, answers)) for _ in range(FLOODERS)]
        await asyncio.sleep(1.0)  # the flood is on
        during: list[float] = []
        peak_rss = 0
        deadline = time.monotonic() + FLOOD_SECONDS
        while time.monotonic() < deadline:
            during.append(await timed_token(stub, admin_key))
            peak_rss = max(peak_rss, memory(identity.pid)["VmRSS"])
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*flooders)
        after = memory(identity.pid)

    limit = chart_memory_limit()
    peak = max(after["VmHWM"], peak_rss)
    report = (
        f"RSS before {before['VmRSS'] / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB "
        f"(limit {limit / MIB:.0f} MiB); client-credentials IssueToken quiet median "
        f"{statistics.median(quiet):.3f} s, during the flood median "
        f"{statistics.median(during):.3f} s, max {max(during):.3f} s over {len(during)}; "
        f"flood answers {dict(answers)}"
    )
    print(report)
    # The flood was real: logins were hashed (how many depends on the machine's speed and
    # load: at least two per hash worker), and the ones beyond the bound refused at once.
    assert answers["INVALID_CREDENTIALS"] >= 2 * HASH_WORKERS, report
    assert answers["LOGIN_BUSY"] > 0, report
    assert set(answers) <= {"sent", "INVALID_CREDENTIALS", "LOGIN_BUSY"}, report
    # Memory: within the chart's limit, and grown by no more than the hashes allowed at once
    # (plus one hash of slack for allocator fragmentation).
    assert peak < limit, report
    assert peak - before["VmRSS"] < (HASH_WORKERS + 1) * HASH_MIB * MIB, report
    # A partner's token never waits behind the hashes (bounds loose enough for a busy
    # two-core test machine: it took 6.1 s when it did).
    assert statistics.median(during) < 1.0, report
    assert max(during) < 2.5, report
