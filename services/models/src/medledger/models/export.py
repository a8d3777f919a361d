"""ONNX export with skl2onnx: float32 tensors, no ZipMap, a pinned opset, reproducible bytes.

The logistic model is written with standard ONNX operators (MatMul, Add, Sigmoid, ArgMax)
instead of skl2onnx's default ``ai.onnx.ml.LinearClassifier``: ONNX Runtime runs the
``ai.onnx.ml`` operators on the CPU only, so on a KIND_GPU instance the default graph would
bounce between GPU and CPU. The tree ensemble stays an ``ai.onnx.ml`` operator (CPU only:
its Triton instances are KIND_CPU).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import numpy as np
import onnx
from skl2onnx import convert_sklearn
from skl2onnx.algebra.onnx_ops import (
    OnnxAdd,
    OnnxArgMax,
    OnnxConcat,
    OnnxMatMul,
    OnnxSigmoid,
    OnnxSub,
)
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.linear_model import LogisticRegression

from medledger.models.catalogue import INPUT_TENSOR, ModelSpec, Tensor
from medledger.models.training import TrainedModel

# Triton 2.51 runs ONNX Runtime 1.19, which implements the default domain up to opset 21 and
# ai.onnx.ml up to 4; skl2onnx lowers each to what the graph needs, never above these.
TARGET_OPSET: Final = {"": 17, "ai.onnx.ml": 3}
PRODUCER_DOMAIN: Final = "dev.medledger"

_ONNX_TYPES: Final = {"FP32": onnx.TensorProto.FLOAT, "INT64": onnx.TensorProto.INT64}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _logistic_shapes(operator: Any) -> None:
    rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = Int64TensorType([rows, 1])
    operator.outputs[1].type = FloatTensorType([rows, 2])


def _logistic_standard_ops(scope: Any, operator: Any, container: Any) -> None:
    """probabilities = [1 - p, p] with p = sigmoid(x . coef + intercept), as scikit-learn's
    predict_proba; label = argmax (a tie at 0.5 is class 0, as scikit-learn's predict)."""
    model = operator.raw_operator
    opset = container.target_opset
    logit = OnnxAdd(
        OnnxMatMul(operator.inputs[0], model.coef_.T.astype(np.float32), op_version=opset),
        model.intercept_.astype(np.float32),
        op_version=opset,
    )
    positive = OnnxSigmoid(logit, op_version=opset)
    negative = OnnxSub(np.array([1.0], dtype=np.float32), positive, op_version=opset)
    probabilities = OnnxConcat(
        negative,
        positive,
        axis=1,
        op_version=opset,
        output_names=[operator.outputs[1].full_name],
    )
    label = OnnxArgMax(
        probabilities,
        axis=1,
        keepdims=1,
        op_version=opset,
        output_names=[operator.outputs[0].full_name],
    )
    probabilities.add_to(scope, container)
    label.add_to(scope, container)


def _rename_output(model: onnx.ModelProto, old: str, new: str) -> None:
    for node in model.graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
    for output in model.graph.output:
        if output.name == old:
            output.name = new


def _canonicalise(model: onnx.ModelProto, spec: ModelSpec) -> None:
    """Fix what would otherwise vary between runs or say nothing: skl2onnx lists the opset
    domains in set order (it changes with PYTHONHASHSEED), so sort them."""
    imports = sorted((entry.domain, entry.version) for entry in model.opset_import)
    del model.opset_import[:]
    for domain, version in imports:
        model.opset_import.add(domain=domain, version=version)
    model.domain = PRODUCER_DOMAIN
    model.model_version = spec.version
    model.doc_string = spec.title
    del model.metadata_props[:]
    for key, value in (("medledger.model", spec.name), ("medledger.version", str(spec.version))):
        model.metadata_props.add(key=key, value=value)


def _check_signature(model: onnx.ModelProto, spec: ModelSpec) -> None:
    """The graph's inputs and outputs are the spec's, batch dimension first and free."""

    def signature(values: Any) -> list[tuple[str, int, list[int | str]]]:
        found = []
        for value in values:
            tensor = value.type.tensor_type
            dims: list[int | str] = [
                d.dim_value if d.HasField("dim_value") else "?" for d in tensor.shape.dim
            ]
            found.append((value.name, tensor.elem_type, dims))
        return found

    def expected(tensors: tuple[Tensor, ...]) -> list[tuple[str, int, list[int | str]]]:
        return [(t.name, _ONNX_TYPES[t.datatype], ["?", *t.dims]) for t in tensors]

    for kind, got, want in (
        ("inputs", signature(model.graph.input), expected(spec.inputs)),
        ("outputs", signature(model.graph.output), expected(spec.outputs)),
    ):
        if got != want:
            raise ValueError(f"{spec.name}: ONNX {kind} {got} differ from the spec's {want}")


def to_onnx(trained: TrainedModel) -> bytes:
    """The model as ONNX bytes: the same bytes for the same training, run after run."""
    spec = trained.spec
    initial_types = [(INPUT_TENSOR, FloatTensorType([None, len(spec.features)]))]
    if spec.task == "regression":
        model = convert_sklearn(
            trained.estimator,
            name=spec.name,
            initial_types=initial_types,
            target_opset=TARGET_OPSET,
        )
        _rename_output(model, model.graph.output[0].name, spec.outputs[0].name)
    else:
        pipeline = trained.estimator
        model = convert_sklearn(
            pipeline,
            name=spec.name,
            initial_types=initial_types,
            target_opset=TARGET_OPSET,
            options={
                # Sub and Div instead of ai.onnx.ml.Scaler (CPU only in ONNX Runtime).
                id(pipeline.named_steps["scale"]): {"div": "div"},
                id(pipeline.named_steps["logistic"]): {"zipmap": False},
            },
            custom_shape_calculators={LogisticRegression: _logistic_shapes},
            custom_conversion_functions={LogisticRegression: _logistic_standard_ops},
        )
    _canonicalise(model, spec)
    _check_signature(model, spec)
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data
