"""The listener's logic: MLLP framing, the message header, acknowledgements and the facility
directory. No sockets and no gRPC here: the record service comes in through ``ports``."""
