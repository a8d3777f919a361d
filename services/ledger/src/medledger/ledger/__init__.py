"""medledger.ledger: the ledger service."""
