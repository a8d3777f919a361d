"""The witness's logic: which logs it trusts and when a checkpoint may be cosigned.

No gRPC, no Mongo, no Vault here: storage and signing come in through ``ports``.
"""
