"""medledger.inference: the inference service."""
