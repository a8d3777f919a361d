"""Inference benchmark: Predict through the service against direct Triton calls of the same
rows, where a prediction's time goes, BatchPredict's model-call throughput, and the
inference process's peak memory."""
