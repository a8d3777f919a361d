"""The ledger's adapters: MongoDB storage (tiles, entries, checkpoints, lease) and Vault signing."""
