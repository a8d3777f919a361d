"""medledger's clinical risk models, built reproducibly (``make models``)."""
