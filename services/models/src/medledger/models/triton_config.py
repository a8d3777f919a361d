"""Triton ``config.pbtxt`` for both layouts, from one ``ModelSpec``.

production: the ONNX Runtime backend runs ``model.onnx`` (KIND_GPU, or KIND_CPU for tree
ensembles, whose ORT operators are CPU only). local: the Python backend runs the same
``model.onnx`` with onnxruntime in Triton's own virtualenv (the Triton that nvidia-pytriton
bundles has no ONNX Runtime backend). Everything a client sees is shared: the name, the tensor
names, types and dims, the batch limit, dynamic batching and the version policy.
"""

from __future__ import annotations

from typing import Final, Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from medledger.models.catalogue import MAX_BATCH_SIZE, ModelSpec

Layout = Literal["local", "production"]
LAYOUTS: Final[tuple[Layout, ...]] = ("local", "production")

ONNX_FILE: Final = "model.onnx"
PYTHON_MODEL_FILE: Final = "model.py"
# Requests that arrive within this window are run as one batch; small enough that a single
# prediction barely waits.
MAX_QUEUE_DELAY_US: Final = 100
# Tree ensembles on a GPU node run on its CPU: two instances so one slow batch does not
# hold up the next.
CPU_INSTANCES_IN_PRODUCTION: Final = 2

_DATA_TYPES: Final = {"FP32": mc.TYPE_FP32, "INT64": mc.TYPE_INT64}


def model_config(spec: ModelSpec, layout: Layout) -> mc.ModelConfig:
    config = mc.ModelConfig(name=spec.name, max_batch_size=MAX_BATCH_SIZE)
    # Serve exactly the version whose digest was registered, even if another folder appears.
    config.version_policy.specific.versions.append(spec.version)
    for tensor in spec.inputs:
        config.input.add(name=tensor.name, data_type=_DATA_TYPES[tensor.datatype], dims=tensor.dims)
    for tensor in spec.outputs:
        config.output.add(
            name=tensor.name, data_type=_DATA_TYPES[tensor.datatype], dims=tensor.dims
        )
    config.dynamic_batching.max_queue_delay_microseconds = MAX_QUEUE_DELAY_US
    warmup = config.model_warmup.add(name="zeros", batch_size=1)
    for tensor in spec.inputs:
        sample = warmup.inputs[tensor.name]
        sample.data_type = _DATA_TYPES[tensor.datatype]
        sample.dims.extend(tensor.dims)
        sample.zero_data = True
    if layout == "production":
        config.backend = "onnxruntime"
        config.default_model_filename = ONNX_FILE
        if spec.runs_on_gpu:
            config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=1)
        else:
            config.instance_group.add(
                kind=mc.ModelInstanceGroup.KIND_CPU, count=CPU_INSTANCES_IN_PRODUCTION
            )
    else:
        config.backend = "python"
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    return config


def render(config: mc.ModelConfig) -> str:
    """The protobuf text format Triton reads as ``config.pbtxt``."""
    text: str = text_format.MessageToString(config)
    return text


def parse(text: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse(text, config)
    return config
