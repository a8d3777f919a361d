"""The record's logic: FHIR validation, compartments, search values, and the storage ports. No gRPC, no Mongo here."""
