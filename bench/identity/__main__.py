"""``python -m bench.identity [--calls N] [--sections verify,...]``

(1) ``verify``: what authenticating one RPC costs a service. In-process, per call: the
    auth interceptor wraps the handler and runs ``JwksTokenVerifier`` on the bearer token
    (JWKS cached, as in steady state) — against a bare joserfc verify of the same token
    with the same key, with and without the same claims checks. The ratio is the
    interceptor's overhead (target: at most 1.5x the bare verify with claims).

Each section is a function in ``SECTIONS``; others (CheckAccess) are added beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import OKPKey
from joserfc.jwt import JWTClaimsRegistry

from bench import bench_state
from bench.identity import checkaccess
from medledger.common.auth import JwksTokenVerifier
from medledger.common.interceptors import AuthInterceptor, current_principal
from medledger.common.policy import ResourceAccess

ISSUER = "medledger://identity"
AUDIENCE = "medledger"
METHOD = "/medledger.api.record.v1.RecordService/Read"

warnings.filterwarnings("ignore", category=SecurityWarning)


class CallContext:
    """What the interceptor reads from a call: its metadata (the rest of a grpc.aio
    context is not touched on this path)."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


class CallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


Operation = Callable[[], Awaitable[object]]


async def interleaved(
    calls: int, operations: dict[str, Operation], rounds: int = 20
) -> dict[str, list[float]]:
    """Seconds per call of each operation, measured in ``rounds`` rounds that take turns
    (so a noisy neighbour or a clock change hits every operation alike), after a warm-up."""
    for operation in operations.values():
        for _ in range(min(500, calls)):
            await operation()
    per_round = max(1, calls // rounds)
    results: dict[str, list[float]] = {name: [] for name in operations}
    order = list(operations)
    gc.disable()
    try:
        for turn in range(rounds):
            for name in order[turn % len(order) :] + order[: turn % len(order)]:
                operation = operations[name]
                start = time.perf_counter()
                for _ in range(per_round):
                    await operation()
                results[name].append((time.perf_counter() - start) / per_round)
    finally:
        gc.enable()
    return results


def summary(rounds: list[float]) -> str:
    median, best = statistics.median(rounds) * 1e6, min(rounds) * 1e6
    return f"{median:8.1f} µs/call median of {len(rounds)} rounds (best {best:.1f})"


async def bench_verify(calls: int) -> None:
    print(f"(1) token verification, {calls} calls each")
    key = OKPKey.generate_key("Ed25519", parameters={"kid": "bench-1"})
    public = OKPKey.import_key(key.as_dict(private=False))
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "lab-app",
        "aud": AUDIENCE,
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "jti": uuid.uuid4().hex,
        "org": "st-marys",
        "client_id": "lab-app",
        "scope": "system/Observation.rs system/Patient.rs ledger.read",
        "purposes": ["TREAT"],
    }
    token = jwt.encode({"alg": "EdDSA", "kid": "bench-1"}, claims, key, algorithms=["EdDSA"])
    jwks = json.dumps({"keys": [{**public.as_dict(), "use": "sig", "alg": "EdDSA"}]})

    async def fetch() -> str:
        return jwks

    registry = JWTClaimsRegistry(
        leeway=30,
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": AUDIENCE},
        exp={"essential": True},
        iat={"essential": True},
        sub={"essential": True},
    )

    async def bare() -> object:
        return jwt.decode(token, public, algorithms=["EdDSA"])

    async def bare_with_claims() -> object:
        decoded = jwt.decode(token, public, algorithms=["EdDSA"])
        registry.validate(decoded.claims)
        return decoded

    verifier = JwksTokenVerifier(fetch, issuer=ISSUER, audience=AUDIENCE)
    interceptor = AuthInterceptor(verifier, {METHOD: ResourceAccess("*", "r")})

    async def handler_behaviour(request: Any, context: Any) -> Any:
        return current_principal.get()

    handler = grpc.unary_unary_rpc_method_handler(handler_behaviour)

    async def continuation(details: grpc.HandlerCallDetails) -> Any:
        return handler

    details = CallDetails(METHOD)
    context = CallContext(token)

    async def intercepted() -> object:
        wrapped = await interceptor.intercept_service(continuation, details)
        assert wrapped.unary_unary is not None
        return await wrapped.unary_unary(None, cast(grpc.ServicerContext, context))

    async def verifier_only() -> object:
        return await verifier.verify(token, METHOD)

    assert await intercepted() is not None  # the principal reached the handler
    # The bare verifies run as coroutines too, so every path pays the same await.
    results = await interleaved(
        calls,
        {
            "bare joserfc decode": bare,
            "bare joserfc decode + claims": bare_with_claims,
            "JwksTokenVerifier.verify": verifier_only,
            "AuthInterceptor + verifier": intercepted,
        },
    )
    for name, rounds in results.items():
        print(f"    {name:<30} {summary(rounds)}")
    path = statistics.median(results["AuthInterceptor + verifier"])
    with_claims = statistics.median(results["bare joserfc decode + claims"])
    decode_only = statistics.median(results["bare joserfc decode"])
    print(
        f"    ratio interceptor path / bare verify with claims: {path / with_claims:.2f}x "
        f"(target <= 1.5x); / bare decode only: {path / decode_only:.2f}x"
    )


async def bench_check_access(_calls: int) -> None:
    with bench_state("bench-identity-", keep=False) as workdir:
        await checkaccess.main(workdir, consents=10_000, patients=1_000, decisions=2_000)


SECTIONS: dict[str, Callable[[int], Awaitable[None]]] = {
    "verify": bench_verify,
    "checkaccess": bench_check_access,
}


async def run(calls: int, sections: list[str]) -> None:
    print(f"# identity benchmark — cores: {os.cpu_count()}")
    for name in sections:
        await SECTIONS[name](calls)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.identity")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    args = parser.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections: {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    asyncio.run(run(args.calls, sections))


if __name__ == "__main__":
    main()
