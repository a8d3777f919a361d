"""The local layout on the real tritonserver (Python backend, onnxruntime in Triton's own
virtualenv): both models load, declare the spec's tensors, and answer what onnxruntime
answers for the same model.onnx, one request or many at once.

One tritonserver for the module, serving the session's freshly built local repository.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from tritonclient.grpc.aio import InferenceServerClient, InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from medledger.devstack.process import free_ports
from medledger.devstack.triton import TritonServer
from medledger.models.catalogue import MAX_BATCH_SIZE, MODELS, ModelSpec
from medledger.models.repository import BuiltModel

pytestmark = pytest.mark.triton

# Triton's virtualenv runs onnxruntime 1.19.2 (what Triton 2.51's ORT backend runs), the
# workspace a newer one: the same float32 graph, so at most a rounding step apart.
ATOL = 1e-6
RTOL = 1e-6


@pytest.fixture(scope="module")
def local_triton(
    model_repositories: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    state = tmp_path_factory.mktemp("models-triton")
    grpc_port, http_port, metrics_port = free_ports(3)
    server = TritonServer(
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        state_dir=state,
        model_repository=model_repositories / "local",
        log_file=state / "triton.log",
        die_with_parent=True,
        # The first start on a machine builds Triton's virtualenv.
        start_timeout=300,
    )
    server.start()
    yield server
    server.stop()


def _model(models: list[BuiltModel], spec: ModelSpec) -> BuiltModel:
    return next(m for m in models if m.spec.name == spec.name)


def _onnxruntime(model: BuiltModel, x: np.ndarray) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(model.onnx, providers=["CPUExecutionProvider"])
    names = [t.name for t in model.spec.outputs]
    return dict(zip(names, session.run(names, {"features": x}), strict=True))


async def _triton(
    client: InferenceServerClient, spec: ModelSpec, x: np.ndarray
) -> dict[str, np.ndarray]:
    features = InferInput("features", list(x.shape), "FP32")
    features.set_data_from_numpy(x)
    result = await client.infer(
        spec.name,
        [features],
        model_version=str(spec.version),
        outputs=[InferRequestedOutput(t.name) for t in spec.outputs],
    )
    return {t.name: result.as_numpy(t.name) for t in spec.outputs}


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype
        assert got[name].shape == expected.shape
        if expected.dtype == np.int64:
            assert np.array_equal(got[name], expected)
        else:
            np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL)


def _rows(model: BuiltModel) -> np.ndarray:
    trained = model.trained
    return np.concatenate([trained.x_test, trained.reference[None, :]]).astype(np.float32)


async def test_both_models_serve_the_declared_tensors(local_triton: TritonServer) -> None:
    async with InferenceServerClient(local_triton.grpc_url) as client:
        for spec in MODELS:
            assert await client.is_model_ready(spec.name, str(spec.version))
            metadata = await client.get_model_metadata(spec.name, as_json=True)
            assert metadata["versions"] == [str(spec.version)]
            assert metadata["platform"] == "python"

            def shapes(tensors: list[dict[str, object]]) -> list[tuple[object, ...]]:
                return [
                    (t["name"], t["datatype"], [int(d) for d in t["shape"]])  # type: ignore[attr-defined]
                    for t in tensors
                ]

            assert shapes(metadata["inputs"]) == [("features", "FP32", [-1, len(spec.features)])]
            assert shapes(metadata["outputs"]) == [
                (t.name, t.datatype, [-1, *t.dims]) for t in spec.outputs
            ]
            config = (await client.get_model_config(spec.name, as_json=True))["config"]
            assert config["backend"] == "python"
            assert int(config["max_batch_size"]) == MAX_BATCH_SIZE
            assert "dynamic_batching" in config


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
async def test_outputs_equal_onnxruntime(
    local_triton: TritonServer, built_models: list[BuiltModel], spec: ModelSpec
) -> None:
    model = _model(built_models, spec)
    x = _rows(model)
    async with InferenceServerClient(local_triton.grpc_url) as client:
        got = await _triton(client, spec, x)
    _assert_same(got, _onnxruntime(model, x))


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
async def test_a_shapley_enumeration_is_one_request_and_larger_is_refused(
    local_triton: TritonServer, built_models: list[BuiltModel], spec: ModelSpec
) -> None:
    model = _model(built_models, spec)
    n = len(spec.features)
    masks = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    mixes = np.where(masks == 1, model.trained.x_test[0], model.trained.reference)
    mixes = mixes.astype(np.float32)
    too_many = np.repeat(model.trained.reference[None, :], MAX_BATCH_SIZE + 1, axis=0)
    async with InferenceServerClient(local_triton.grpc_url) as client:
        got = await _triton(client, spec, mixes)
        with pytest.raises(InferenceServerException, match="batch"):
            await _triton(client, spec, too_many)
    _assert_same(got, _onnxruntime(model, mixes))


async def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(
    local_triton: TritonServer, built_models: list[BuiltModel]
) -> None:
    """The dynamic batcher hands model.py several requests at once; each answer must hold
    exactly its own request's rows."""
    spec = MODELS[1]
    model = _model(built_models, spec)
    rows = model.trained.x_test
    requests = [rows[i : i + 1 + i % 4] for i in range(64)]
    async with InferenceServerClient(local_triton.grpc_url) as client:
        before = await client.get_inference_statistics(spec.name, as_json=True)
        answers = await asyncio.gather(*(_triton(client, spec, x) for x in requests))
        after = await client.get_inference_statistics(spec.name, as_json=True)
    for x, got in zip(requests, answers, strict=True):
        _assert_same(got, _onnxruntime(model, x))

    def counts(stats: dict[str, list[dict[str, str]]]) -> tuple[int, int]:
        entry = stats["model_stats"][0]
        return int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0))

    inferences = counts(after)[0] - counts(before)[0]
    executions = counts(after)[1] - counts(before)[1]
    assert inferences == sum(len(x) for x in requests)
    assert executions < len(requests)
