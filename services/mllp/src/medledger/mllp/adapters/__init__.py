"""The listener's ties to the outside: the record service over gRPC, and the TCP server."""
