"""medledger.witness: the witness service."""
