"""The record's adapters: Mongo (sealed documents) and Vault (patient data keys)."""
