"""What an access report costs as the ledger grows (docs/access-report.md): its JSON and PDF
sizes, the offline verification's time, and a continuing report's (``--from-size``) against a
whole one, on ledgers of record-service-shaped entries built in-process (blinded as the patient
log blinds them, a checkpoint signed with a key of this run's own).

    uv run --frozen python -m bench.access_report [--sizes 300 20000] [--patient-entries 60]

The ratio printed for a continuing report is against the whole report of the same ledger,
measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.cli.access_report_pdf import render_pdf
from medledger.common.blinding import Opening, scan_key
from medledger.common.ledger_client import LedgerEvent
from medledger.common.patient_log import blinded_event
from medledger.tlog import Checkpoint, CompactRange, Ed25519Signer, leaf_hash
from medledger.tlog.note import sign_note
from medledger.tlog.reference import inclusion_proof
from medledger.verify.access_report import (
    FOUND_BY_NONCE,
    AccessReport,
    Base,
    border_from_last_leaf,
    listed_entry,
    parse_access_report,
    verify_access_report,
)
from medledger.verify.trust import TrustPolicy

ORIGIN = "bench.medledger/ledger"
KINDS = (
    ledger_pb2.EVENT_KIND_RECORD_CREATED,
    ledger_pb2.EVENT_KIND_RECORD_READ,
    ledger_pb2.EVENT_KIND_RECORD_READ,
    ledger_pb2.EVENT_KIND_RECORD_UPDATED,
)


def entry(opening: Opening, kind: int, n: int) -> bytes:
    event = blinded_event(
        LedgerEvent(
            kind=kind,  # type: ignore[arg-type]
            actor=f"client-{n % 97:010x}",
            organization=f"hospital-{'ab'[n % 2]}",
            resource_type=opening.resource_type,
            resource_id=opening.resource_id,
            resource_version=opening.resource_version,
            content_commitment=os.urandom(32),
            purpose=purpose_pb2.PURPOSE_OF_USE_TREAT,
        ),
        opening,
    )
    built = ledger_pb2.LedgerEntry(
        kind=event.kind,
        subject=event.subject,
        content_commitment=event.content_commitment,
        actor=event.actor,
        organization=event.organization,
        purpose=event.purpose,
        trace_id=os.urandom(16),
        nonce=opening.nonce,
    )
    built.time.FromSeconds(1_800_000_000 + n)
    built.resource.CopyFrom(
        ledger_pb2.ResourceRef(type=event.resource_type, id=event.resource_id, version=0)
    )
    return built.SerializeToString(deterministic=True)


async def run(size: int, patient_entries: int, signer: Ed25519Signer) -> None:
    chooser = random.Random(size)
    ours = os.urandom(32)
    our_key = scan_key(os.urandom(32))  # the patient's scan key, from their scan secret
    mine = set(chooser.sample(range(size), min(patient_entries, size)))
    leaves: list[bytes] = []
    listed = []
    for n in range(size):
        pseudonym, key = (ours, our_key) if n in mine else (os.urandom(32), os.urandom(32))
        opening = Opening.derived(
            os.urandom(32), pseudonym, "Observation", f"obs-{n}", 1, scan_key=key
        )
        data = entry(opening, chooser.choice(KINDS), n)
        leaves.append(data)
        if n in mine:
            decoded = ledger_pb2.LedgerEntry.FromString(data)
            listed.append(
                listed_entry(
                    n,
                    decoded,
                    found_by=FOUND_BY_NONCE,
                    salt=opening.salt,
                    resource_id=opening.resource_id,
                    resource_version=1,
                )
            )
    hashes = [leaf_hash(leaf) for leaf in leaves]
    tree = CompactRange()
    tree.extend(hashes)
    note = await sign_note(Checkpoint(ORIGIN, size, tree.root()).body(), [signer])
    policy = TrustPolicy.parse([str(signer.verifier_key)], origin=ORIGIN)
    report = AccessReport("p-1", "2026-11-29T12:00:00.000Z", note, ours, 0, tuple(leaves),
                          tuple(listed), scan_key=our_key)  # fmt: skip

    started = time.perf_counter()
    text = report.to_json()
    written = time.perf_counter() - started
    started = time.perf_counter()
    verify_access_report(parse_access_report(text), policy)
    whole = time.perf_counter() - started
    started = time.perf_counter()
    pdf = render_pdf(report, untestable=0, verify_hint="medledger verify access-report")
    rendering = time.perf_counter() - started

    # A continuing report: the last tenth of the ledger, from the checkpoint before it.
    first = size - size // 10
    earlier = CompactRange()
    earlier.extend(hashes[:first])
    base_note = await sign_note(Checkpoint(ORIGIN, first, earlier.root()).body(), [signer])
    proof = inclusion_proof(first - 1, hashes[:first])
    border = border_from_last_leaf(first, leaves[first - 1], proof)
    later = AccessReport("p-1", report.generated_at, note, ours, first, tuple(leaves[first:]),
                         tuple(e for e in listed if e.leaf_index >= first),
                         Base(base_note, tuple(border)), our_key)  # fmt: skip
    later_text = later.to_json()
    started = time.perf_counter()
    verify_access_report(parse_access_report(later_text), policy)
    continuing = time.perf_counter() - started

    print(
        f"ledger {size:>6} leaves, {len(listed)} the patient's: JSON {len(text) / 1e6:6.2f} MB "
        f"({len(text) / size:.0f} B/leaf, written in {written:.2f} s), PDF {len(pdf) / 1e3:.1f} kB "
        f"({rendering:.2f} s); verify {whole:.2f} s. Continuing report of the last "
        f"{size - first} leaves: JSON {len(later_text) / 1e6:.2f} MB, verify {continuing:.2f} s "
        f"({continuing / whole:.2f} of the whole report's time)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.access_report")
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 20_000])
    parser.add_argument("--patient-entries", type=int, default=60)
    options = parser.parse_args()
    signer = Ed25519Signer.generate(ORIGIN)
    for size in options.sizes:
        asyncio.run(run(size, options.patient_entries, signer))


if __name__ == "__main__":
    main()
