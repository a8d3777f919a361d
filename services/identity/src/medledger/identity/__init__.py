"""medledger.identity: the identity service."""
