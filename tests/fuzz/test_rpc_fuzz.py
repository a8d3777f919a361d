"""Every method of every service, fuzzed from reflection alone: no request may reach INTERNAL
or UNKNOWN, nor an error message naming a Python exception.

The five services are built by their own ``build()`` from the environment the stack
launcher gives them, served in this process against the session's MongoDB and OpenBao, and
called with an access token holding every scope (so requests reach the handlers; scope
denial has its own test). Requests come from each method's request descriptor as the server
publishes it: typed messages from hypothesis, then damaged on the wire.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import hvac
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from joserfc.jwk import OKPKey

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2_grpc
from medledger.common.scopes import PLATFORM_SCOPES
from medledger.common.server import ServiceServer
from medledger.common.vault_layout import TRANSIT_MOUNT
from medledger.devstack.process import free_ports
from medledger.devstack.services import (
    IdentityBootstrap,
    StackEndpoints,
    read_stack_keys,
    service_env,
    service_module,
)
from medledger.identity.config import IdentityConfig
from medledger.testkit.platform import ADMIN_CLIENT, Platform
from medledger.testkit.rpc_fuzz import (
    Method,
    Outcome,
    call,
    defect,
    reflected_methods,
    request_bytes,
    wire_mutants,
)

# Start order: the ledger pushes to the witness; identity appends to the ledger.
SERVICES = ("witness-a", "ledger", "identity", "record", "inference")
# Every platform scope and every SMART resource scope a client may hold.
ALL_SCOPES = " ".join([*sorted(PLATFORM_SCOPES), "system/*.cruds", "user/*.cruds"])
ALL_PURPOSES = [p for p in purpose_pb2.PurposeOfUse.values() if p]
# Its own signing key, so the RotateSigningKey calls fuzzing makes stay out of other tests.
SIGNING_KEY = "fuzz-identity-token"
# Each rotation retires old keys from the JWKS (and so the fuzzer's token): sent last.
SENT_LAST = ("/medledger.api.identity.v1.IdentityService/RotateSigningKey",)
ROUNDS = 4
MESSAGES_PER_METHOD = 15  # typed requests per method and round (fewer if the type is small)
MIN_CASES = 10_000  # a run: spread evenly over the methods (typed requests, then mutants)
CONCURRENCY = 48
CALL_TIMEOUT_S = 60.0
DENIED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


@dataclass
class FuzzStack:
    addresses: dict[str, str]
    token: str


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` holding ``values`` while a service's ``build()`` reads its settings."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _create_signing_key(vault: Any) -> None:
    client = hvac.Client(url=vault.addr, token=vault.token, timeout=10)
    try:
        client.secrets.transit.create_key(
            SIGNING_KEY, key_type="ed25519", mount_point=TRANSIT_MOUNT
        )
    finally:
        client.adapter.close()


@pytest.fixture(scope="module")
async def fuzz_stack(
    mongo_server: Any, vault_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FuzzStack]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    admin_key = OKPKey.generate_key("Ed25519", parameters={"kid": "fuzz-admin"})
    jwks_file = root / "admin.jwks.json"
    jwks_file.write_text(json.dumps({"keys": [admin_key.as_dict(private=False)]}))
    await asyncio.to_thread(_create_signing_key, vault_server)
    ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    endpoints = StackEndpoints(
        mongo_uri=mongo_server.uri,
        vault_addr=vault_server.addr,
        # The root token: the fuzz signing key is in no service's policy.
        vault_tokens=dict.fromkeys(SERVICES, vault_server.token),
        triton_url="127.0.0.1:9",  # nothing listens: inference serves, health NOT_SERVING
        model_repository=root,  # an empty model repository: every model is unserved
        service_ports=ports,
        keys=await asyncio.to_thread(read_stack_keys, vault_server.addr, vault_server.token),
        identity_bootstrap=IdentityBootstrap(ADMIN_CLIENT, jwks_file),
    )
    database = f"fuzz{uuid.uuid4().hex[:8]}"
    servers: list[ServiceServer] = []
    identity_runtime: Any = None
    try:
        for name in SERVICES:
            env = service_env(name, endpoints)
            env["MEDLEDGER_MONGODB_DATABASE"] = f"{database}_{name.replace('-', '_')}"
            env["IDENTITY_SIGNING_KEY"] = SIGNING_KEY
            with environment(env):
                runtime = importlib.import_module(
                    f"medledger.{service_module(name)}.__main__"
                ).build()
            server = ServiceServer(runtime)
            await server.start()
            servers.append(server)
            if name == "identity":
                identity_runtime = runtime
        await asyncio.wait_for(identity_runtime.bootstrapper.done.wait(), 60)
        identity_address = f"127.0.0.1:{ports['identity']}"
        async with grpc.aio.insecure_channel(identity_address) as channel:
            platform = Platform(
                identity_address=identity_address,
                ledger_address=f"127.0.0.1:{ports['ledger']}",
                stub=identity_pb2_grpc.IdentityServiceStub(channel),
                config=IdentityConfig(),
                admin_key=admin_key,
            )
            # Registered for every purpose, so record requests reach past CheckAccess.
            token = await platform.token(ALL_SCOPES, "fuzz-org", ALL_PURPOSES)
        yield FuzzStack({n: f"127.0.0.1:{p}" for n, p in ports.items()}, token)
    finally:
        for server in reversed(servers):
            await server.stop(0)


def _typed_requests(method: Method, count: int) -> list[bytes]:
    """Up to ``count`` requests hypothesis builds from the method's request descriptor."""
    found: list[bytes] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(request_bytes(method.request))
    def collect(data: bytes) -> None:
        found.append(data)

    collect()
    return found[:count]


def _round(methods: list[Method], rng: random.Random) -> list[tuple[Method, bytes]]:
    cases: list[tuple[Method, bytes]] = []
    per_method = -(-MIN_CASES // (ROUNDS * len(methods)))
    for method in methods:
        typed = _typed_requests(method, MESSAGES_PER_METHOD)
        per_message = -(-(per_method - len(typed)) // len(typed))
        mutants = [
            m for data in typed for m in wire_mutants(data, method.request, rng, per_message)
        ]
        chosen = typed + mutants[: per_method - len(typed)]
        cases += [(method, data) for data in chosen]
    return cases


async def _send(
    addresses: list[str], methods: dict[str, str], cases: list[tuple[Method, bytes]], token: str
) -> list[Outcome]:
    metadata = [("authorization", f"Bearer {token}")]
    limit = asyncio.Semaphore(CONCURRENCY)
    channels = {a: grpc.aio.insecure_channel(a) for a in addresses}

    async def one(method: Method, data: bytes) -> Outcome:
        async with limit:
            return await call(
                channels[methods[method.path]], method, data, metadata, CALL_TIMEOUT_S
            )

    try:
        return await asyncio.gather(*(one(m, d) for m, d in cases))
    finally:
        for channel in channels.values():
            await channel.close(None)


async def test_no_request_reaches_internal_unknown_or_names_an_exception(
    fuzz_stack: FuzzStack,
) -> None:
    started = time.monotonic()
    owner: dict[str, str] = {}
    methods: list[Method] = []
    for name, address in fuzz_stack.addresses.items():
        found = await asyncio.to_thread(reflected_methods, address)
        assert found, f"{name} publishes no medledger service by reflection"
        for method in found:
            owner[method.path] = address
        methods += found
    services = {m.path.split("/")[1] for m in methods}
    assert len(services) == len(SERVICES)
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    defects: dict[str, Outcome] = {}
    codes: Counter[str] = Counter()
    # Methods some request got past authentication with (every one should: the token holds
    # every scope, and a request that does not decode is refused only after authentication).
    reached: set[str] = set()
    last: list[tuple[Method, bytes]] = []
    for round_ in range(ROUNDS + 1):
        if round_ < ROUNDS:
            cases = await asyncio.to_thread(_round, methods, rng)
            last += [case for case in cases if case[0].path in SENT_LAST]
            cases = [case for case in cases if case[0].path not in SENT_LAST]
        else:
            cases = last
        for outcome in await _send(
            list(fuzz_stack.addresses.values()), owner, cases, fuzz_stack.token
        ):
            codes[outcome.code.name] += 1
            if outcome.code not in DENIED:
                reached.add(outcome.method)
            why = defect(outcome)
            if why is not None:
                defects.setdefault(f"{outcome.method}: {why}", outcome)
    elapsed = time.monotonic() - started
    report = "\n".join(
        f"{key}\n    request ({len(outcome.request)} bytes; hex, the first 200): "
        f"{outcome.request[:200].hex()}"
        for key, outcome in sorted(defects.items())
    )
    assert not defects, f"{len(defects)} defects (wire-mutation seed {seed}):\n{report}"
    assert reached == {m.path for m in methods}, "never past authentication: " + ", ".join(
        sorted({m.path for m in methods} - reached)
    )
    sent = sum(codes.values())
    assert sent >= MIN_CASES, f"only {sent} cases"
    print(f"{sent} cases over {len(methods)} methods in {elapsed:.1f} s: {dict(codes)}")
