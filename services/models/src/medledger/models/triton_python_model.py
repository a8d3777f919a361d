"""Triton Python-backend model that runs the ``model.onnx`` beside it with onnxruntime.

Copied as ``<model>/<version>/model.py`` into the local model repository (the Triton that
nvidia-pytriton bundles has only the Python backend); it runs inside Triton's own virtualenv,
not the workspace's. It serves exactly the tensors its ``config.pbtxt`` declares, and refuses
to load when the ONNX graph disagrees with them. Requests the dynamic batcher hands over
together run as one ONNX Runtime call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_ONNX_TYPES = {"TYPE_FP32": "tensor(float)", "TYPE_INT64": "tensor(int64)"}


class TritonPythonModel:
    """The Python backend's model interface (``initialize``, ``execute``, ``finalize``)."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        onnx_file = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        # One thread: Triton already runs an instance per configured slot, and the local
        # machine is small.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(onnx_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        _check_graph(self.session.get_inputs(), config["input"], "input")
        _check_graph(self.session.get_outputs(), config["output"], "output")

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            batches = [
                {
                    name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    for name in self.input_names
                }
                for request in requests
            ]
            feed = {
                name: np.concatenate([batch[name] for batch in batches])
                for name in self.input_names
            }
            results = self.session.run(self.output_names, feed)
        except Exception as error:  # noqa: BLE001 - every request gets the error as its answer
            failure = pb_utils.TritonError(f"onnxruntime: {error}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=failure) for _ in requests]
        responses = []
        start = 0
        for batch in batches:
            rows = len(batch[self.input_names[0]])
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(result[start : start + rows]))
                for name, result in zip(self.output_names, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += rows
        return responses

    def finalize(self) -> None:
        del self.session


def _check_graph(values: list[Any], declared: list[dict[str, Any]], kind: str) -> None:
    """The ONNX graph's tensors are the configuration's, in order, with its types and dims."""
    found = [(v.name, v.type, [d if isinstance(d, int) else -1 for d in v.shape]) for v in values]
    wanted = [
        (t["name"], _ONNX_TYPES.get(t["data_type"], t["data_type"]), [-1, *map(int, t["dims"])])
        for t in declared
    ]
    if found != wanted:
        raise pb_utils.TritonModelException(
            f"model.onnx {kind}s {found} differ from config.pbtxt's {wanted}"
        )
