"""The witness's adapters: its state in MongoDB, its cosigning key in Vault transit."""
