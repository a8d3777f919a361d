"""Picking the checkpoint an export proves against: signatures counted on the signed note."""

from __future__ import annotations

from medledger.record.adapters.ledger_reads import _signatures, _size

BODY = b"ledger.example/log\n42\nq6bUZ+xF2Vb4o8y8g0v9dS4fA0X4n3k8c1mF0e7kZ6w=\n"


def note(*names: str) -> bytes:
    lines = [f"\u2014 {name} AAAAAQ==\n".encode() for name in names]
    return BODY + b"\n" + b"".join(lines)


def test_every_signature_line_is_counted() -> None:
    assert _signatures(note("ledger.example/log")) == 1
    assert _signatures(note("ledger.example/log", "witness-a", "witness-b")) == 3
    # A body line that merely starts like a signature is not one.
    assert _signatures("\u2014 x\n1\nroot\n\n".encode()) == 0


def test_the_size_is_the_second_line() -> None:
    assert _size(note("ledger.example/log")) == 42
