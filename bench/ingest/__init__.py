"""Ingest benchmark: CSV lab rows and HL7 v2 messages written with receipts, per resource,
against the record service's single creates in the same run."""
