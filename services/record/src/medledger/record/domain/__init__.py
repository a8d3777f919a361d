"""The record's logic: FHIR validation, compartments, search values, storage ports.

No gRPC, no Mongo here.
"""
