"""Ledger benchmark: durable appends against raw MongoDB inserts; proofs at a million leaves."""
