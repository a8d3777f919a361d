"""``python -m bench.ledger [--leaves N] [--seconds S]``

In one run, against the same MongoDB-compatible server (fsync on commit, as the local
stack runs it) and OpenBao:

(a) raw inserts of the same entry documents the ledger stores: bulk ``insert_many`` in
    chunks of 256, and one document per ``insert_many`` from 1, 8 and 32 concurrent clients;
(b) durable ``Append`` (answered only once integrated, with a receipt) from 1, 8 and 32
    concurrent clients: appends/s, p50/p99 append→receipt;
(c) a log of ``--leaves`` leaves built by a bulk loader (same tiles and checkpoint format
    as the sequencer writes), then ``GetInclusionProof`` latency over gRPC and the number
    of MongoDB reads per proof (counted with a PyMongo command listener).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bson.binary import Binary
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo import AsyncMongoClient, MongoClient, monitoring

from bench import add_keep_state, bench_state
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.config import VaultSettings
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import LEDGER_CHECKPOINT_KEY
from medledger.devstack.mongo import MongoServer
from medledger.devstack.process import free_port, free_ports
from medledger.devstack.services import SERVICE_PORTS, ServiceServer, StackEndpoints, service_env
from medledger.devstack.vault import DevVault
from medledger.ledger.adapters.mongo_store import LedgerStore
from medledger.ledger.adapters.vault_signer import VaultNoteSigner
from medledger.ledger.domain.log import LogReader
from medledger.testkit.platform import authed_channel, start_platform
from medledger.tlog.checkpoint import Checkpoint
from medledger.tlog.compact import CompactRange
from medledger.tlog.hashing import leaf_hash
from medledger.tlog.note import sign_note
from medledger.tlog.tiles import TILE_HEIGHT, TILE_WIDTH
from medledger.tlog.verify import verify_inclusion

ORIGIN = "bench.medledger/ledger"


def entry_bytes(n: int) -> bytes:
    now = Timestamp()
    now.GetCurrentTime()
    return ledger_pb2.LedgerEntry(
        kind=ledger_pb2.EVENT_KIND_RECORD_READ,
        subject=n.to_bytes(32, "big"),
        resource=ledger_pb2.ResourceRef(type="Observation", id=f"obs-{n}", version=1),
        content_commitment=bytes(32),
        actor="client-1",
        organization="org-a",
        time=now,
        trace_id=os.urandom(16),
    ).SerializeToString(deterministic=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def closed_loop(
    clients: int, seconds: float, operation: Callable[[int], Awaitable[None]]
) -> tuple[float, list[float]]:
    """``clients`` loops calling ``operation`` for ``seconds``: (ops/s, latencies in s)."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def client() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await operation(next(counter))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies) / (time.perf_counter() - started), latencies


class BenchLedger(ServiceServer):
    """The ledger as it runs in production: its own process, checking every token."""

    identity = ""

    def __init__(self, endpoints: StackEndpoints, log_file: Path, database: str) -> None:
        super().__init__("ledger", endpoints=endpoints, log_file=log_file)
        self.database = database

    def env(self) -> dict[str, str]:
        env = service_env("ledger", self.endpoints)
        env |= {
            "MEDLEDGER_MONGODB_DATABASE": self.database,
            "LEDGER_ORIGIN": ORIGIN,
            "MEDLEDGER_IDENTITY_ADDR": self.identity,
        }
        return env


TOKEN = [""]  # ledger.append + ledger.read, from the run's identity service


async def raw_inserts(uri: str, seconds: float) -> dict[str, float]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    collection = client["bench_raw"]["ledger_entries"]
    docs = [
        {"_id": i, "data": Binary(entry_bytes(i)), "leaf_hash": Binary(os.urandom(32))}
        for i in range(20_000)
    ]
    started = time.perf_counter()
    for chunk in range(0, len(docs), 256):
        await collection.insert_many(docs[chunk : chunk + 256])
    results = {"bulk": len(docs) / (time.perf_counter() - started)}
    next_id = iter(range(10**6, 10**9))
    for clients in (1, 8, 32):

        async def insert(n: int) -> None:
            doc = {
                "_id": next(next_id),
                "data": Binary(entry_bytes(n)),
                "leaf_hash": Binary(os.urandom(32)),
            }
            await collection.insert_many([doc])

        rate, _ = await closed_loop(clients, seconds, insert)
        results[f"single x{clients}"] = rate
    await client.close()
    return results


async def appends(address: str, seconds: float) -> dict[int, tuple[float, float, float]]:
    results = {}
    async with authed_channel(address, TOKEN[0]) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        template = ledger_pb2.LedgerEntry()
        for clients in (1, 8, 32):

            async def append(n: int) -> None:
                template.ParseFromString(entry_bytes(n))
                await stub.Append(ledger_pb2.AppendRequest(entry=template))

            rate, latencies = await closed_loop(clients, seconds, append)
            results[clients] = (rate, percentile(latencies, 0.5), percentile(latencies, 0.99))
    return results


async def bulk_load(uri: str, database: str, vault: VaultTransit, leaves: int) -> float:
    """Writes a ``leaves``-leaf log as the sequencer would: entries, tiles, a checkpoint."""
    started = time.perf_counter()
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    db = client[database]
    compact = CompactRange()
    tiles: dict[tuple[int, int], bytearray] = {}

    def on_node(level: int, index: int, digest: bytes) -> None:
        if level % TILE_HEIGHT == 0:
            tiles.setdefault((level // TILE_HEIGHT, index // TILE_WIDTH), bytearray()).extend(
                digest
            )

    chunk: list[dict[str, Any]] = []
    for n in range(leaves):
        data = entry_bytes(n)
        digest = leaf_hash(data)
        compact.append(digest, on_node)
        chunk.append({"_id": n, "data": Binary(data), "leaf_hash": Binary(digest)})
        if len(chunk) == 5000:
            db["ledger_entries"].insert_many(chunk)
            chunk = []
    if chunk:
        db["ledger_entries"].insert_many(chunk)
    db["ledger_entries"].create_index("leaf_hash")
    db["ledger_tiles"].insert_many(
        [
            {
                "_id": f"{level}/{index}",
                "level": level,
                "index": index,
                "width": len(row) // 32,
                "hashes": Binary(bytes(row)),
            }
            for (level, index), row in tiles.items()
        ]
    )
    signer = VaultNoteSigner(vault, LEDGER_CHECKPOINT_KEY, ORIGIN)
    root = compact.root()
    note = await sign_note(Checkpoint(ORIGIN, leaves, root).body(), [signer])
    db["ledger_checkpoints"].insert_one(
        {
            "_id": leaves,
            "root": Binary(root),
            "note": Binary(note),
            "border": [Binary(h) for h in compact.hashes],
        }
    )
    db["ledger_state"].insert_one({"_id": "tree", "size": leaves, "root": Binary(root)})
    client.close()
    return time.perf_counter() - started


class ReadCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.reads = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in {"find", "aggregate", "getMore", "count"}:
            self.reads += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def proofs(
    address: str, uri: str, database: str, leaves: int, count: int
) -> dict[str, float]:
    rng = random.Random(1)
    indices = [rng.randrange(leaves) for _ in range(count)]
    latencies = []
    async with authed_channel(address, TOKEN[0]) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        for index in indices:
            started = time.perf_counter()
            reply = await stub.GetInclusionProof(
                ledger_pb2.GetInclusionProofRequest(leaf_index=index)
            )
            latencies.append(time.perf_counter() - started)
        data = (await stub.GetEntry(ledger_pb2.GetEntryRequest(leaf_index=indices[-1]))).entry_bytes
    checkpoint = Checkpoint.parse(bytes(reply.checkpoint).split(b"\n\n")[0] + b"\n")
    verify_inclusion(
        leaf_hash(data), indices[-1], checkpoint.size, list(reply.hashes), checkpoint.root_hash
    )
    # Reads per proof, the way the service's read path does it (LogReader: the latest
    # checkpoint, cached for 250 ms, then the tiles, full ones cached), at 200 proofs/s.
    counter = ReadCounter()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, event_listeners=[counter])
    reader = LogReader(LedgerStore(client, database))
    sample = indices[:200]
    for index in sample:
        latest = await reader.latest()
        await reader.proofs.inclusion([index], latest)
        await asyncio.sleep(0.005)
    await client.close()
    return {
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "reads_per_proof": counter.reads / len(sample),
    }


async def main(workdir: Path, leaves: int, seconds: float, sections: str) -> None:
    mongo = MongoServer(
        port=free_port(),
        storage_path=workdir / "mongo",
        log_file=workdir / "mongo.log",
        die_with_parent=True,
    )
    vault = DevVault(
        port=free_port(with_next=True), log_file=workdir / "vault.log", die_with_parent=True
    )
    mongo.start()
    vault.start()
    vault.provision()
    print(f"# ledger benchmark — cores: {os.cpu_count()}, state: {workdir}")
    ports = dict(zip(SERVICE_PORTS, free_ports(len(SERVICE_PORTS)), strict=True))
    endpoints = StackEndpoints(mongo.uri, vault.addr, vault.service_tokens, "", ports)
    platform, stop_platform = await start_platform(
        mongo.uri,
        identity_vault=VaultSettings(addr=vault.addr, token=vault.token_for("identity")),
        ledger_vault=VaultSettings(addr=vault.addr, token=vault.token_for("ledger")),
    )
    BenchLedger.identity = platform.identity_address
    TOKEN[0] = await platform.token("ledger.append ledger.read")
    if "appends" in sections:
        await bench_appends(mongo.uri, endpoints, workdir, seconds)
    if "proofs" in sections:
        await bench_proofs(mongo.uri, vault, endpoints, workdir, leaves)
    await stop_platform()
    mongo.stop()
    vault.stop()


async def bench_appends(uri: str, endpoints: StackEndpoints, workdir: Path, seconds: float) -> None:
    print("(a) raw MongoDB inserts of ledger entry documents")
    raw = await raw_inserts(uri, seconds)
    for name, rate in raw.items():
        print(f"    {name:<12} {rate:10.0f} docs/s")
    ledger = BenchLedger(endpoints, workdir / "ledger.log", "bench")
    ledger.start()
    await asyncio.sleep(1.5)  # the sequencer takes its lease and writes the empty checkpoint
    print("(b) durable Append → receipt")
    results = await appends(ledger.address, seconds)
    for clients, (rate, p50, p99) in results.items():
        same = raw[f"single x{clients}"]
        print(
            f"    {clients:>2} clients {rate:8.0f} appends/s  p50 {p50 * 1000:7.1f} ms  "
            f"p99 {p99 * 1000:7.1f} ms  ratio vs bulk {rate / raw['bulk']:.2f}  "
            f"vs single-doc x{clients} {rate / same:.2f}"
        )
    ledger.stop()


async def bench_proofs(
    uri: str, vault: DevVault, endpoints: StackEndpoints, workdir: Path, leaves: int
) -> None:
    mongo_uri = uri
    print(f"(c) inclusion proofs at {leaves:,} leaves")
    transit = VaultTransit(VaultSettings(addr=vault.addr, token=vault.token_for("ledger")))
    load_seconds = await bulk_load(mongo_uri, "bench_big", transit, leaves)
    print(f"    bulk load: {load_seconds:.0f} s")
    big = BenchLedger(endpoints, workdir / "ledger-big.log", "bench_big")
    big.start()
    figures = await proofs(big.address, mongo_uri, "bench_big", leaves, 2000)
    print(
        f"    GetInclusionProof p50 {figures['p50_ms']:.2f} ms  p99 {figures['p99_ms']:.2f} ms  "
        f"MongoDB reads per proof {figures['reads_per_proof']:.2f}"
    )
    big.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sections", default="appends,proofs", help="appends, proofs or both")
    add_keep_state(parser)
    args = parser.parse_args()
    with bench_state("bench-ledger-", keep=args.keep_state) as workdir:
        asyncio.run(main(workdir, args.leaves, args.seconds, args.sections))
