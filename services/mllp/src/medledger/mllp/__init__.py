"""medledger.mllp: the MLLP listener that takes HL7 v2 messages from hospital interface
engines, hands each to the record service's ``IngestHl7V2`` as the sending facility's client
and answers it with an HL7 acknowledgement."""
