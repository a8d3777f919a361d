"""How identity talks to MongoDB and Vault."""
