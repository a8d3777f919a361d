"""Duplicate patients benchmark: precision and recall of FindDuplicatePatients on a generated
population with known duplicates, written through the record service; time per call."""
