"""medledger.record: the record service."""
