"""Adapters of the inference service to the outside world (Triton)."""
