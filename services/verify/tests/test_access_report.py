"""The access report's offline check (docs/access-report.md) on a log built here: entries about
four patients blinded as the services blind them (with nonces, keyed by each patient's scan
secret, a few by the legacy scan key of the pseudonym; one patient has no scan secret at all),
entries about nobody, and entries from before nonces, under a checkpoint signed with a key of
the test's own. The honest report verifies through its JSON form; each tampering (a listed
entry dropped or added, a field changed, a leaf changed, dropped or added, another key's
checkpoint, another patient's pseudonym or scan key, a legacy entry passed off as found by the
scan key) fails with the check that catches it; a report continuing an earlier one verifies
from that one's checkpoint and border."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass

import pytest

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.blinding import Opening, legacy_scan_key, scan_key
from medledger.common.ledger_client import LedgerEvent
from medledger.common.patient_log import blinded_event
from medledger.tlog import Checkpoint, CompactRange, Ed25519Signer, leaf_hash
from medledger.tlog.note import sign_note
from medledger.tlog.reference import inclusion_proof
from medledger.verify.access_report import (
    FOUND_BY_LEGACY,
    FOUND_BY_NONCE,
    FOUND_BY_OPENING,
    AccessReport,
    AccessReportInvalid,
    Base,
    ListedEntry,
    border_from_last_leaf,
    listed_entry,
    parse_access_report,
    verify_access_report,
)
from medledger.verify.trust import TrustPolicy

ORIGIN = "access-report.test/ledger"
KINDS = (
    ledger_pb2.EVENT_KIND_RECORD_CREATED,
    ledger_pb2.EVENT_KIND_RECORD_READ,
    ledger_pb2.EVENT_KIND_CONSENT_GRANTED,
    ledger_pb2.EVENT_KIND_BREAK_GLASS,
)


@dataclass(frozen=True)
class Leaf:
    data: bytes
    owner: bytes | None  # the pseudonym of the patient it is about
    opening: Opening | None  # what the record service would hold (None: another service's)
    found_by: str = FOUND_BY_OPENING  # how the patient's report finds it


@dataclass
class Log:
    leaves: list[Leaf]
    signer: Ed25519Signer
    patients: list[bytes]
    # Each patient's scan key (None: the last patient has no scan secret).
    scan_keys: dict[bytes, bytes | None]

    def policy(self) -> TrustPolicy:
        return TrustPolicy.parse([str(self.signer.verifier_key)], origin=ORIGIN)

    async def checkpoint(self, size: int) -> bytes:
        tree = CompactRange()
        tree.extend(leaf_hash(leaf.data) for leaf in self.leaves[:size])
        return await sign_note(Checkpoint(ORIGIN, size, tree.root()).body(), [self.signer])

    def listed(
        self, pseudonym: bytes, first: int = 0, size: int | None = None
    ) -> list[ListedEntry]:
        end = len(self.leaves) if size is None else size
        found = []
        for index in range(first, end):
            leaf = self.leaves[index]
            if leaf.owner != pseudonym:
                continue
            entry = ledger_pb2.LedgerEntry.FromString(leaf.data)
            opening = leaf.opening
            found.append(
                listed_entry(
                    index,
                    entry,
                    found_by=leaf.found_by,
                    salt=opening.salt if opening else b"",
                    resource_id=opening.resource_id if opening else "",
                    resource_version=opening.resource_version if opening else 0,
                    patient_actor=opening.patient_actor if opening else "",
                )
            )
        return found

    async def report(self, pseudonym: bytes) -> AccessReport:
        return AccessReport(
            patient_id="p-1",
            generated_at="2026-11-29T12:00:00.000Z",
            checkpoint=await self.checkpoint(len(self.leaves)),
            pseudonym=pseudonym,
            first_index=0,
            leaves=tuple(leaf.data for leaf in self.leaves),
            entries=tuple(self.listed(pseudonym)),
            scan_key=self.scan_keys[pseudonym],
        )


def _entry(opening: Opening, kind: int, actor: str) -> bytes:
    event = blinded_event(
        LedgerEvent(
            kind=kind,
            actor=actor,
            organization="hospital-a",
            resource_type=opening.resource_type,
            resource_id=opening.resource_id,
            resource_version=opening.resource_version,
            purpose=purpose_pb2.PURPOSE_OF_USE_TREAT,
        ),
        opening,
    )
    entry = ledger_pb2.LedgerEntry(
        kind=event.kind,
        subject=event.subject,
        actor=event.actor,
        organization=event.organization,
        purpose=event.purpose,
        nonce=opening.nonce,
    )
    entry.time.FromSeconds(1_800_000_000)
    entry.resource.CopyFrom(
        ledger_pb2.ResourceRef(type=event.resource_type, id=event.resource_id, version=0)
    )
    return entry.SerializeToString(deterministic=True)


@pytest.fixture(scope="module")
def log() -> Log:
    chooser = random.Random(1414)
    patients = [os.urandom(32) for _ in range(4)]
    keys: dict[bytes, bytes | None] = {p: scan_key(os.urandom(32)) for p in patients[:3]}
    keys[patients[3]] = None  # created before scan secrets
    leaves: list[Leaf] = []
    for n in range(300):
        pseudonym = chooser.choice(patients)
        kind = chooser.choice(KINDS)
        actor = "u-patient" if n % 7 == 0 else "dr-a"
        roll = chooser.random()
        if roll < 0.1:
            token = ledger_pb2.LedgerEntry(
                kind=ledger_pb2.EVENT_KIND_TOKEN_ISSUED, actor="app", organization="hospital-a"
            )
            token.time.FromSeconds(1_800_000_000)
            leaves.append(Leaf(token.SerializeToString(deterministic=True), None, None))
            continue
        salt = os.urandom(32)
        args = (salt, pseudonym, "Observation", f"obs-{n}", 1 + n % 3)
        patient_actor = "u-patient" if actor == "u-patient" else ""
        key = keys[pseudonym]
        if roll < 0.15:  # from before nonces
            opening, found_by = Opening(*args, patient_actor), FOUND_BY_OPENING
        elif key is None or roll < 0.2:  # written while no scan secret was known
            key = legacy_scan_key(pseudonym)
            opening = Opening.derived(*args, patient_actor, scan_key=key)
            found_by = FOUND_BY_LEGACY
        else:
            opening, found_by = Opening.derived(*args, patient_actor, scan_key=key), FOUND_BY_NONCE
        data = _entry(opening, kind, actor)
        # identity's entries (consents, break-glass) come without the record's opening.
        held = None if kind in KINDS[2:] and found_by != FOUND_BY_OPENING else opening
        leaves.append(Leaf(data, pseudonym, held, found_by))
    return Log(leaves, Ed25519Signer.generate(ORIGIN), patients, keys)


def replace_entry(report: AccessReport, index: int, **changes: object) -> AccessReport:
    entries = tuple(
        dataclasses.replace(e, **changes) if e.leaf_index == index else e  # type: ignore[arg-type]
        for e in report.entries
    )
    return dataclasses.replace(report, entries=entries)


async def test_the_honest_report_verifies_through_its_json(log: Log) -> None:
    for pseudonym in log.patients:
        report = await log.report(pseudonym)
        parsed = parse_access_report(report.to_json())
        assert parsed == report
        verified = verify_access_report(parsed, log.policy())
        assert verified.size == len(log.leaves)
        theirs = [i for i, leaf in enumerate(log.leaves) if leaf.owner == pseudonym]
        assert [e.leaf_index for e in parsed.entries] == theirs
        legacy_others = sum(
            1
            for leaf in log.leaves
            if leaf.owner not in (None, pseudonym)
            and not ledger_pb2.LedgerEntry.FromString(leaf.data).nonce
        )
        assert verified.untestable == legacy_others
        assert any(e.break_glass for e in parsed.entries)
        assert any(e.actor == "patient" and e.patient_actor for e in parsed.entries)
        legacy = [e for e in parsed.entries if e.found_by == FOUND_BY_LEGACY]
        assert verified.legacy == len(legacy) > 0
        if report.scan_key is None:  # no scan secret: everything with a nonce is legacy
            assert not any(e.found_by == FOUND_BY_NONCE for e in parsed.entries)
        else:
            assert any(e.found_by == FOUND_BY_NONCE for e in parsed.entries)


async def fails(report: AccessReport, log: Log, check: str, text: str) -> None:
    with pytest.raises(AccessReportInvalid) as failed:
        verify_access_report(report, log.policy())
    assert failed.value.check == check
    assert text in failed.value.message


async def test_a_dropped_entry_is_missing(log: Log) -> None:
    report = await log.report(log.patients[0])
    dropped = next(e for e in report.entries if e.found_by == FOUND_BY_NONCE)
    shorter = dataclasses.replace(
        report, entries=tuple(e for e in report.entries if e is not dropped)
    )
    await fails(
        shorter,
        log,
        "scan",
        f"missing: 1 entry about the patient not listed (leaf {dropped.leaf_index})",
    )


async def test_another_patients_entry_is_extra(log: Log) -> None:
    report = await log.report(log.patients[0])
    theirs = (await log.report(log.patients[1])).entries
    stranger = next(e for e in theirs if e.found_by == FOUND_BY_NONCE)
    added = dataclasses.replace(
        report, entries=tuple(sorted((*report.entries, stranger), key=lambda e: e.leaf_index))
    )
    await fails(added, log, "scan", f"extra: leaf {stranger.leaf_index} is listed")
    legacy = next(e for e in theirs if e.found_by == FOUND_BY_OPENING)
    added = dataclasses.replace(report, entries=(*report.entries, legacy))
    await fails(added, log, "scan", f"extra: leaf {legacy.leaf_index}")


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"organization": "hospital-b"}, "organization is 'hospital-b'"),
        ({"actor": "dr-b"}, "actor is 'dr-b'"),
        ({"purpose": "ETREAT"}, "purpose is 'ETREAT'"),
        ({"event": "RECORD_UPDATED"}, "event is 'RECORD_UPDATED'"),
        ({"time": "2020-01-01T00:00:00.000Z"}, "time is"),
        ({"resource_id": "obs-other"}, "blinded with the opening's salt"),
        ({"resource_version": 99}, "blinded with the opening's salt"),
    ],
)
async def test_a_changed_field_fails(log: Log, change: dict[str, object], text: str) -> None:
    report = await log.report(log.patients[0])
    opened = next(e for e in report.entries if e.salt and e.actor != "patient")
    await fails(replace_entry(report, opened.leaf_index, **change), log, "fields", text)


async def test_a_hidden_break_glass_or_a_shown_resource_without_opening_fails(log: Log) -> None:
    report = await log.report(log.patients[0])
    glass = next(e for e in report.entries if e.break_glass)
    await fails(
        replace_entry(report, glass.leaf_index, break_glass=False),
        log,
        "fields",
        "break_glass is False",
    )
    unopened = next(e for e in report.entries if not e.salt)
    await fails(
        replace_entry(report, unopened.leaf_index, resource_id="obs-1"),
        log,
        "fields",
        "without an opening",
    )
    by_patient = next(e for e in report.entries if e.patient_actor)
    await fails(
        replace_entry(report, by_patient.leaf_index, patient_actor="u-other"),
        log,
        "fields",
        "does not open the entry's actor",
    )


async def test_changed_or_missing_leaves_change_the_root(log: Log) -> None:
    report = await log.report(log.patients[0])
    leaves = list(report.leaves)
    changed = ledger_pb2.LedgerEntry.FromString(leaves[5])
    changed.organization = "hospital-z"
    leaves[5] = changed.SerializeToString(deterministic=True)
    await fails(dataclasses.replace(report, leaves=tuple(leaves)), log, "root", "hash to root")
    # One leaf dropped and another added: the count holds, the root does not.
    swapped = (*report.leaves[:10], *report.leaves[11:], report.leaves[0])
    await fails(dataclasses.replace(report, leaves=swapped), log, "root", "left out")
    await fails(dataclasses.replace(report, leaves=report.leaves[:-1]), log, "leaves", "299 leaves")


async def test_a_checkpoint_of_another_key_or_size_fails(log: Log) -> None:
    report = await log.report(log.patients[0])
    other = Ed25519Signer.generate(ORIGIN)
    forged = await sign_note(Checkpoint(ORIGIN, len(log.leaves), os.urandom(32)).body(), [other])
    await fails(dataclasses.replace(report, checkpoint=forged), log, "checkpoint", "")
    smaller = await log.checkpoint(len(log.leaves) - 1)
    await fails(dataclasses.replace(report, checkpoint=smaller), log, "leaves", "299 leaves")


async def test_another_pseudonym_finds_other_entries(log: Log) -> None:
    report = await log.report(log.patients[0])
    wrong = dataclasses.replace(report, pseudonym=log.patients[1])
    await fails(wrong, log, "scan", "extra")


async def test_the_scan_key_and_the_legacy_key_are_told_apart(log: Log) -> None:
    report = await log.report(log.patients[0])
    # Another patient's scan key finds none of this patient's entries.
    other = dataclasses.replace(report, scan_key=log.scan_keys[log.patients[1]])
    await fails(other, log, "scan", "extra: leaf")
    # Without the scan key, the legacy key alone does not find them.
    await fails(dataclasses.replace(report, scan_key=None), log, "scan", "extra: leaf")
    # A legacy entry may not pass for one erasure unlinks, nor the reverse.
    legacy = next(e for e in report.entries if e.found_by == FOUND_BY_LEGACY)
    await fails(
        replace_entry(report, legacy.leaf_index, found_by=FOUND_BY_NONCE),
        log,
        "scan",
        f"leaf {legacy.leaf_index} is found by legacy-nonce, not by nonce",
    )
    keyed = next(e for e in report.entries if e.found_by == FOUND_BY_NONCE)
    await fails(
        replace_entry(report, keyed.leaf_index, found_by=FOUND_BY_LEGACY),
        log,
        "scan",
        "is found by nonce, not by legacy-nonce",
    )
    # The legacy key given as the scan key would present legacy entries as unlinkable.
    disguised = dataclasses.replace(report, scan_key=legacy_scan_key(log.patients[0]))
    await fails(disguised, log, "scan", "legacy scan key")


async def test_a_report_continues_an_earlier_one(log: Log) -> None:
    pseudonym = log.patients[2]
    first = 137
    hashes = [leaf_hash(leaf.data) for leaf in log.leaves[:first]]
    border = border_from_last_leaf(
        first, log.leaves[first - 1].data, inclusion_proof(first - 1, hashes)
    )
    report = AccessReport(
        patient_id="p-1",
        generated_at="2026-11-29T12:00:00.000Z",
        checkpoint=await log.checkpoint(len(log.leaves)),
        pseudonym=pseudonym,
        first_index=first,
        leaves=tuple(leaf.data for leaf in log.leaves[first:]),
        entries=tuple(log.listed(pseudonym, first)),
        base=Base(await log.checkpoint(first), tuple(border)),
        scan_key=log.scan_keys[pseudonym],
    )
    parsed = parse_access_report(report.to_json())
    verified = verify_access_report(parsed, log.policy())
    assert verified.base is not None
    assert verified.base.size == first
    assert all(e.leaf_index >= first for e in parsed.entries)
    assert parsed.entries
    bad_border = Base(report.base.checkpoint, (os.urandom(32), *border[1:]))  # type: ignore[union-attr]
    await fails(dataclasses.replace(report, base=bad_border), log, "checkpoint", "border")
    # An entry before the base is outside what the report covers.
    earlier = log.listed(pseudonym, 0, first)[0]
    await fails(
        dataclasses.replace(report, entries=(earlier, *report.entries)), log, "scan", "outside"
    )
    await fails(dataclasses.replace(report, base=None), log, "checkpoint", "without a base")


def test_a_report_that_is_not_one_is_refused() -> None:
    for data, text in (
        (b"[]", "not an object"),
        (b'{"format": "x"}', "format is 'x'"),
        (b"\xff", "not UTF-8"),
        (b'{"format": 1, "format": 2}', "appears twice"),
        # Made before scan secrets: its "nonce" entries were found by the legacy key.
        (b'{"format": "medledger.access-report/1"}', "not 'medledger.access-report/2'"),
    ):
        with pytest.raises(AccessReportInvalid) as failed:
            parse_access_report(data)
        assert failed.value.check == "format"
        assert text in failed.value.message


async def test_the_scan_key_must_be_given_and_32_bytes(log: Log) -> None:
    document = json.loads((await log.report(log.patients[0])).to_json())
    for value, text in ((None, "missing"), ("AAAA", "3 bytes, not 32")):
        changed = dict(document)
        if value is None:
            del changed["scan_key"]
        else:
            changed["scan_key"] = value
        with pytest.raises(AccessReportInvalid) as failed:
            parse_access_report(json.dumps(changed).encode())
        assert failed.value.check == "format"
        assert text in failed.value.message
