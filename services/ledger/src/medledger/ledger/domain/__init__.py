"""The ledger's logic: entry validation, the sequencer, proofs. No gRPC, no Mongo here."""
