"""`make models`: reproducible bytes, ONNX equal to scikit-learn, Triton configs, model cards."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from medledger.devstack.devstack import DevStack
from medledger.devstack.paths import StackPaths, local_model_repository, models_dir
from medledger.models.catalogue import MAX_BATCH_SIZE, MODELS, ModelSpec
from medledger.models.repository import BuiltModel, repository_files, write_repository
from medledger.models.training import TrainedModel
from medledger.models.triton_config import parse

# The ONNX model computes in float32, scikit-learn in float64. Regression: relative 1e-6
# (150 trees summed in float32; measured 3e-7). Probabilities: absolute 1e-6 (measured 1.2e-7).
REGRESSION_RTOL = 1e-6
PROBABILITY_ATOL = 1e-6
RANDOM_ROWS = 20_000


def _session(model: BuiltModel) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(model.onnx, providers=["CPUExecutionProvider"])


def _score(model: BuiltModel, x: np.ndarray) -> np.ndarray:
    score = model.spec.score
    (out,) = _session(model).run([score.tensor], {"features": x})
    return np.asarray(out)[:, score.column]


def _model(models: list[BuiltModel], name: str) -> BuiltModel:
    return next(m for m in models if m.spec.name == name)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _build_in_subprocess(out: Path, hash_seed: str, *extra: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    subprocess.run(
        [sys.executable, "-m", "medledger.models", "build", "--out", str(out), *extra],
        check=True,
        env=env,
        capture_output=True,
        timeout=240,
    )


def _uniform_rows(trained: TrainedModel, rows: int) -> np.ndarray:
    """Random inputs spread over the training range of every feature (whole numbers for
    the coded sex feature), to reach tree thresholds the data never sits on."""
    generator = np.random.default_rng(2026)
    low = trained.x_train.min(axis=0)
    high = trained.x_train.max(axis=0)
    x = generator.uniform(low, high, size=(rows, len(low))).astype(np.float32)
    for index, feature in enumerate(trained.spec.features):
        if feature.categories:
            x[:, index] = np.rint(x[:, index])
    return x


# --- reproducibility --------------------------------------------------------------------------


def test_two_builds_are_byte_identical(model_repositories: Path, tmp_path: Path) -> None:
    """Separate processes with different hash seeds (skl2onnx once listed opset domains in
    set order) build the same bytes as this session, file for file; `--layout production`
    writes the production repository straight into its folder."""
    _build_in_subprocess(tmp_path / "all", "1")
    _build_in_subprocess(tmp_path / "production", "2", "--layout", "production")
    session = _tree(model_repositories)
    again = _tree(tmp_path / "all")
    assert sorted(again) == sorted(session)
    assert again == session
    production = _tree(tmp_path / "production")
    assert production == _tree(model_repositories / "production")
    assert not any(path.endswith("model.py") for path in production)


def test_rebuild_touches_nothing_unchanged_and_removes_only_our_stale_files(
    built_models: list[BuiltModel], tmp_path: Path
) -> None:
    files = repository_files(built_models, "local")
    names = [m.spec.name for m in built_models]
    first = write_repository(tmp_path, files, names)
    assert sorted(first.written) == sorted(files)
    onnx_file = tmp_path / "diabetes-progression" / "1" / "model.onnx"
    stamp = onnx_file.stat().st_mtime_ns
    stale = tmp_path / "diabetes-progression" / "2" / "model.onnx"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    foreign = tmp_path / "someone-elses-model" / "config.pbtxt"
    foreign.parent.mkdir()
    foreign.write_text("name: 'x'")
    again = write_repository(tmp_path, files, names)
    assert again.written == []
    assert again.removed == ["diabetes-progression/2/model.onnx"]
    assert not stale.parent.exists()
    assert foreign.exists()
    assert onnx_file.stat().st_mtime_ns == stamp


# --- ONNX equals scikit-learn ------------------------------------------------------------------


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_onnx_scores_equal_scikit_learn(built_models: list[BuiltModel], spec: ModelSpec) -> None:
    model = _model(built_models, spec.name)
    trained = model.trained
    x = np.concatenate(
        [trained.x_train, trained.x_test, _uniform_rows(trained, RANDOM_ROWS)]
    ).astype(np.float32)
    got = _score(model, x)
    want = trained.predict_sklearn(x)
    if spec.task == "regression":
        np.testing.assert_allclose(got, want, rtol=REGRESSION_RTOL, atol=0)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=PROBABILITY_ATOL)
        (labels,) = _session(model).run(["label"], {"features": x})
        assert np.array_equal(labels[:, 0], trained.estimator.predict(x).astype(np.int64))


def test_onnx_graphs_suit_their_triton_instances(built_models: list[BuiltModel]) -> None:
    """The GPU model uses only default-domain operators (all of which ONNX Runtime's CUDA
    provider runs); the tree model is the ai.onnx.ml tree ensemble (CPU only: KIND_CPU)."""
    for model in built_models:
        graph = onnx.load_model_from_string(model.onnx)
        domains = {node.domain for node in graph.graph.node}
        opsets = {entry.domain: entry.version for entry in graph.opset_import}
        assert opsets.get("", 0) <= 17
        assert opsets.get("ai.onnx.ml", 0) <= 3
        if model.spec.runs_on_gpu:
            assert domains == {""}
        else:
            assert {n.op_type for n in graph.graph.node} == {"TreeEnsembleRegressor"}
        assert graph.graph.input[0].name == "features"
        assert [o.name for o in graph.graph.output] == [t.name for t in model.spec.outputs]


# --- Triton layouts ----------------------------------------------------------------------------


def _config(root: Path, layout: str, name: str) -> mc.ModelConfig:
    return parse((root / layout / name / "config.pbtxt").read_text())


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_production_config(model_repositories: Path, spec: ModelSpec) -> None:
    config = _config(model_repositories, "production", spec.name)
    assert config.name == spec.name
    assert config.backend == "onnxruntime"
    assert config.default_model_filename == "model.onnx"
    assert config.max_batch_size == MAX_BATCH_SIZE
    assert config.max_batch_size >= 2 ** len(spec.features)  # one exact-Shapley enumeration
    assert config.HasField("dynamic_batching")
    assert list(config.version_policy.specific.versions) == [spec.version]
    kinds = [group.kind for group in config.instance_group]
    want = mc.ModelInstanceGroup.KIND_GPU if spec.runs_on_gpu else mc.ModelInstanceGroup.KIND_CPU
    assert kinds == [want]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("features", mc.TYPE_FP32, [len(spec.features)])
    ]
    types = {"FP32": mc.TYPE_FP32, "INT64": mc.TYPE_INT64}
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        (t.name, types[t.datatype], list(t.dims)) for t in spec.outputs
    ]
    version_dir = model_repositories / "production" / spec.name / str(spec.version)
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "model-card.json",
        "model-card.md",
        "model.onnx",
    ]


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_local_config_differs_only_in_how_it_runs(
    model_repositories: Path, spec: ModelSpec
) -> None:
    local = _config(model_repositories, "local", spec.name)
    production = _config(model_repositories, "production", spec.name)
    assert local.backend == "python"
    assert [g.kind for g in local.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    for config in (local, production):
        config.ClearField("backend")
        config.ClearField("instance_group")
        config.ClearField("default_model_filename")
    assert local == production
    local_dir = model_repositories / "local" / spec.name / str(spec.version)
    production_dir = model_repositories / "production" / spec.name / str(spec.version)
    assert (local_dir / "model.onnx").read_bytes() == (production_dir / "model.onnx").read_bytes()
    assert (local_dir / "model.py").is_file()


# --- model cards -------------------------------------------------------------------------------


def _card(root: Path, spec: ModelSpec) -> dict[str, object]:
    path = root / "production" / spec.name / str(spec.version) / "model-card.json"
    card: dict[str, object] = json.loads(path.read_text())
    return card


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_card_names_the_served_file_and_the_data(
    model_repositories: Path, built_models: list[BuiltModel], spec: ModelSpec
) -> None:
    card = _card(model_repositories, spec)
    onnx_file = model_repositories / "local" / spec.name / str(spec.version) / "model.onnx"
    model = card["model"]
    assert isinstance(model, dict)
    assert model["sha256"] == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert model["bytes"] == onnx_file.stat().st_size
    for field in ("intended_use", "out_of_scope_use", "training_data", "limitations"):
        assert card[field]
    metrics = card["metrics"]
    assert isinstance(metrics, dict)
    held_out = metrics["held_out"]
    trained = _model(built_models, spec.name).trained
    assert card["training_data"]["held_out_rows"] == len(trained.y_test)  # type: ignore[index]
    if spec.task == "regression":
        assert 0.3 < held_out["r2"] < 1
    else:
        assert held_out["roc_auc"] > 0.98
        assert held_out["sensitivity"] > 0.9


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_card_features_cover_the_data(
    model_repositories: Path, built_models: list[BuiltModel], spec: ModelSpec
) -> None:
    """Every row of the data set (training and held out) lies inside the plausible ranges,
    so the refusal ranges would refuse no patient the model was built from; the reference
    is a plausible value; codes are unique; the order is the ONNX input's."""
    card = _card(model_repositories, spec)
    features = card["features"]
    assert isinstance(features, list)
    assert [f["name"] for f in features] == list(spec.feature_names)
    assert len({(f["code"]["system"], f["code"]["code"]) for f in features}) == len(features)
    trained = _model(built_models, spec.name).trained
    x = np.concatenate([trained.x_train, trained.x_test])
    for index, (row, feature) in enumerate(zip(features, spec.features, strict=True)):
        observed = np.exp(x[:, index]) if feature.transform == "ln" else x[:, index]
        assert feature.low <= observed.min()
        assert observed.max() <= feature.high
        assert feature.in_range(row["reference"]["value"])
        assert row["reference"]["model_input"] == pytest.approx(
            feature.model_input(row["reference"]["value"]), rel=1e-5
        )
        if feature.categories:
            assert {c["model_input"] for c in row["categories"]} == set(np.unique(x[:, index]))
        else:
            assert row["unit"]


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_card_output_and_base_score(
    model_repositories: Path, built_models: list[BuiltModel], spec: ModelSpec
) -> None:
    card = _card(model_repositories, spec)
    model = _model(built_models, spec.name)
    output = card["output"]
    explanation = card["explanation"]
    assert isinstance(output, dict)
    assert isinstance(explanation, dict)
    assert output["score"]["tensor"] == spec.score.tensor
    reference = model.trained.reference[None, :]
    assert explanation["base_score"] == float(_score(model, reference)[0])
    if spec.task == "binary-classification":
        assert output["score"]["kind"] == "probability"
        assert explanation["space"] == "probability"
        assert output["label"]["values"] == {"0": "benign", "1": "malignant"}
    else:
        assert output["score"]["kind"] == "regression"


def _exact_shapley(f: np.ndarray, n: int) -> np.ndarray:
    """Baseline Shapley values from f over all 2^n masks (bit i set: feature i from x)."""
    weights = [math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)]
    phi = np.zeros(n)
    for mask in range(2**n):
        for i in range(n):
            if not mask & (1 << i):
                phi[i] += weights[bin(mask).count("1")] * (f[mask | (1 << i)] - f[mask])
    return phi


def test_card_log_odds_contributions_are_exact(
    model_repositories: Path, built_models: list[BuiltModel]
) -> None:
    """The classifier card's claim: coefficient_i * (x_i - reference_i) are the exact
    Shapley values in log-odds (checked by enumerating all 2^10 mixes through the ONNX
    model), and the probability-space Shapley values add up to score - base_score."""
    model = _model(built_models, "breast-cancer-malignancy")
    spec = model.spec
    explanation = _card(model_repositories, spec)["explanation"]
    assert isinstance(explanation, dict)
    log_odds = explanation["log_odds"]
    coefficients = np.array([log_odds["coefficients"][name] for name in spec.feature_names])
    n = len(spec.features)
    reference = model.trained.reference
    # A borderline patient: near 0 or 1 a float32 probability's logit loses digits.
    held_out = model.trained.x_test
    patient = held_out[np.argmin(np.abs(_score(model, held_out) - 0.5))]
    masks = np.array(list(itertools.product([0, 1], repeat=n)))[:, ::-1]  # row m: bits of m
    mixes = np.where(masks == 1, patient, reference).astype(np.float32)
    p = _score(model, mixes).astype(np.float64)
    logit = np.log(p / (1 - p))
    phi_log_odds = _exact_shapley(logit, n)
    np.testing.assert_allclose(phi_log_odds, coefficients * (patient - reference), atol=2e-5)
    phi = _exact_shapley(p, n)
    assert phi.sum() == pytest.approx(p[-1] - explanation["base_score"], abs=1e-6)
    logit_patient = log_odds["intercept"] + float(coefficients @ patient.astype(np.float64))
    assert logit_patient == pytest.approx(logit[-1], abs=2e-5)


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_card_ai_transparency_resources(model_repositories: Path, spec: ModelSpec) -> None:
    card = _card(model_repositories, spec)
    fhir = card["ai_transparency"]
    assert isinstance(fhir, dict)
    device, document = fhir["device"], fhir["model_card_document"]
    base = "http://hl7.org/fhir/uv/aitransparency"
    assert device["meta"]["profile"] == [f"{base}/StructureDefinition/AI-Device"]
    assert device["type"]["coding"][0]["code"] == "Artificial-Intelligence"
    digest = card["model"]["sha256"]  # type: ignore[index]
    assert {"system": "urn:ietf:rfc:3986", "value": f"urn:sha256:{digest}"} in device["identifier"]
    assert document["meta"]["profile"] == [f"{base}/StructureDefinition/AI-ModelCard"]
    assert document["type"]["coding"][0]["code"] == "AIModelCard"
    attachment = document["content"][0]["attachment"]
    markdown = (
        model_repositories / "production" / spec.name / str(spec.version) / "model-card.md"
    ).read_bytes()
    assert base64.b64decode(attachment["data"]) == markdown
    assert attachment["contentType"] == "text/markdown"
    assert base64.b64decode(attachment["hash"]) == hashlib.sha1(markdown).digest()
    assert digest in markdown.decode()


def test_make_models_writes_what_the_local_stack_serves(tmp_path: Path) -> None:
    """`make models` builds into the folder whose local/ layout `medledger dev up` serves."""
    root = Path(__file__).resolve().parents[3]
    makefile = (root / "Makefile").read_text()
    assert "python -m medledger.models build --out build/models\n" in makefile
    assert models_dir(root) == root / "build" / "models"
    stack = DevStack(StackPaths(tmp_path / "home"))
    assert stack.triton.model_repository == local_model_repository()
    assert stack.triton.model_control_mode == "poll"
