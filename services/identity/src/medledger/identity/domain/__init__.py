"""The identity service's logic: no gRPC, no MongoDB, no Vault client."""
