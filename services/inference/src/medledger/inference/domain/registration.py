"""A model registration as an admin asks for it, and every check it must pass before the
service looks at Triton.

A registration names a Triton model version (``name``, ``version``), the SHA-256 of its ONNX
file (``digest``), what its score means (``task``), its inputs in the model's input order
(``features``: name, code, UCUM unit, accepted range) and its model card (JSON, as ``make
models`` writes it: :mod:`medledger.models.card`). :func:`validate_registration` checks them
all at once and raises one ``InvalidArgument`` naming each bad field (BadRequest); the card
must say the same as the fields (name, version, SHA-256, each feature's name, code, unit and
range, the score's kind) and declare the tensors Triton must serve, which it returns.

Descriptions are fixed strings: they name fields and paths in the card, never echo a value.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from medledger.common.bounded_json import MAX_DEPTH, parse_json
from medledger.common.errors import FieldViolation, InvalidArgument
from medledger.common.ucum import is_ucum
from medledger.inference.domain.explain import MAX_EXACT_FEATURES
from medledger.inference.domain.model_definition import ModelCardInvalid, parse_model_card

LOINC: Final = "http://loinc.org"
# A Triton model folder name that is also a FHIR id, so that the ledger entry can name the
# model (resource Model/<name>): letters, digits, '-' and '.', starting with a letter or digit
# (never '.' or '..', never a path).
MODEL_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}")
MAX_VERSION: Final = 2**63 - 1
DIGEST_SIZE: Final = 32
# The file Triton's ONNX Runtime backend loads from a version folder (and the local Python
# backend's model.py runs): the one whose digest is registered.
MODEL_FILE: Final = "model.onnx"
MAX_CARD_BYTES: Final = 1024 * 1024
# As domain.features names them: a letter, then up to 63 letters, digits, spaces or _.-
FEATURE_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.\- ]{0,63}")
LOINC_CODE: Final = re.compile(r"[0-9]{1,8}-[0-9]")
# FHIR's code: no leading, trailing or double whitespace.
CODE: Final = re.compile(r"[^\s]+( [^\s]+)*")
MAX_CODE_LENGTH: Final = 64
CODE_SYSTEM: Final = re.compile(r"[a-z][a-z0-9+.\-]*:[^\s]{1,250}")
MAX_UNIT_LENGTH: Final = 64
TENSOR_NAME: Final = re.compile(r"[A-Za-z0-9_.\-:]{1,128}")
# Triton's tensor data types.
DATATYPES: Final = frozenset(
    {
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BF16",
        "BYTES",
    }
)
MAX_TENSORS: Final = 16
MAX_DIMS: Final = 8


class ModelTask(StrEnum):
    """What a model's score means."""

    REGRESSION = "regression"
    BINARY_CLASSIFICATION = "binary-classification"


# The model card's ``output.score.kind`` for each task.
SCORE_KINDS: Final[Mapping[ModelTask, str]] = {
    ModelTask.REGRESSION: "regression",
    ModelTask.BINARY_CLASSIFICATION: "probability",
}


@dataclass(frozen=True)
class FeatureDefinition:
    """One model input: the Observation code that carries it (``code_system`` "" is LOINC),
    the UCUM unit of its value ("" for a coded value, whose card lists its categories) and
    the closed range ``[min_value, max_value]`` it accepts."""

    name: str
    code: str
    code_system: str
    unit: str
    min_value: float
    max_value: float

    @property
    def system(self) -> str:
        return self.code_system or LOINC


@dataclass(frozen=True)
class ModelRegistration:
    """What an admin registers; ``task`` None when the request named no known task."""

    name: str
    version: int
    digest: bytes
    task: ModelTask | None
    features: tuple[FeatureDefinition, ...]
    card_json: str

    def fingerprint(self) -> str:
        """SHA-256 (hex) of what makes two registrations the same model: every field, the
        card as canonical JSON (its formatting does not matter)."""
        try:
            card: Any = parse_json(self.card_json)
        except ValueError:
            card = self.card_json
        canonical = json.dumps(
            [
                self.name,
                self.version,
                self.digest.hex(),
                self.task.value if self.task is not None else None,
                [
                    [f.name, f.code, f.system, f.unit, f.min_value, f.max_value]
                    for f in self.features
                ],
                card,
            ],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Tensor:
    """A model input or output as Triton's metadata reports it: shape with the batch
    dimension (-1)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelTensors:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


def validate_registration(registration: ModelRegistration) -> ModelTensors:
    """The tensors the card declares, once every field and the card check out; else one
    InvalidArgument naming each problem (fields under ``model.``, card paths in the
    description of ``model.model_card_json``)."""
    problems: list[FieldViolation] = []
    _check_fields(problems, registration)
    tensors = _check_card(problems, registration)
    if not problems:
        # What Predict will read from the card (features' references, the label rule):
        # a card Predict cannot use is refused now, not at the first prediction.
        try:
            parse_model_card(registration.card_json)
        except ModelCardInvalid as error:
            problems += [FieldViolation(_CARD, problem) for problem in error.problems]
    if problems:
        raise InvalidArgument(problems)
    assert tensors is not None  # a card without tensors is a problem reported above
    return tensors


def check_model_name(problems: list[FieldViolation], field: str, name: str) -> None:
    if not MODEL_NAME.fullmatch(name):
        problems.append(
            FieldViolation(
                field,
                "must be 1-64 letters, digits, '-' or '.', starting with a letter or digit",
            )
        )


def _check_fields(problems: list[FieldViolation], registration: ModelRegistration) -> None:
    check_model_name(problems, "model.name", registration.name)
    if not 1 <= registration.version <= MAX_VERSION:
        problems.append(FieldViolation("model.version", "must be at least 1"))
    if len(registration.digest) != DIGEST_SIZE:
        problems.append(
            FieldViolation("model.digest", "must be the 32-byte SHA-256 of the ONNX file")
        )
    if registration.task is None:
        problems.append(FieldViolation("model.task", "must be a known ModelTask"))
    features = registration.features
    if not features:
        problems.append(FieldViolation("model.features", "at least one feature is required"))
    elif len(features) > MAX_EXACT_FEATURES:
        problems.append(
            FieldViolation(
                "model.features",
                f"at most {MAX_EXACT_FEATURES} (exact contributions score 2^n mixes)",
            )
        )
    seen: set[str] = set()
    for index, feature in enumerate(features):
        _check_feature(problems, f"model.features[{index}]", feature)
        if feature.name in seen:
            problems.append(FieldViolation(f"model.features[{index}].name", "is used twice"))
        seen.add(feature.name)
    if not registration.card_json.strip():
        problems.append(FieldViolation("model.model_card_json", "is required"))


def _check_feature(problems: list[FieldViolation], field: str, feature: FeatureDefinition) -> None:
    if not FEATURE_NAME.fullmatch(feature.name):
        problems.append(
            FieldViolation(
                f"{field}.name", "must be a letter then up to 63 letters, digits, spaces or _.-"
            )
        )
    if feature.code_system and not CODE_SYSTEM.fullmatch(feature.code_system):
        problems.append(
            FieldViolation(f"{field}.code_system", "must be an absolute URI, or empty for LOINC")
        )
    if not feature.code_system:
        if not LOINC_CODE.fullmatch(feature.code):
            problems.append(
                FieldViolation(f"{field}.loinc_code", "must be a LOINC code (e.g. 2345-7)")
            )
    elif len(feature.code) > MAX_CODE_LENGTH or not CODE.fullmatch(feature.code):
        problems.append(
            FieldViolation(f"{field}.loinc_code", "must be a code of code_system (1-64 characters)")
        )
    if feature.unit and (len(feature.unit) > MAX_UNIT_LENGTH or not is_ucum(feature.unit)):
        problems.append(
            FieldViolation(f"{field}.unit", "must be a UCUM code, or empty for a coded value")
        )
    low, high = feature.min_value, feature.max_value
    if not (math.isfinite(low) and math.isfinite(high)):
        problems.append(FieldViolation(f"{field}.min_value", "the range must be finite"))
    elif low >= high:
        problems.append(FieldViolation(f"{field}.min_value", "must be below max_value"))


# --- the model card --------------------------------------------------------------------------

_CARD = "model.model_card_json"


class _Card:
    """Collects the card's problems as violations of ``model.model_card_json``."""

    def __init__(self, problems: list[FieldViolation]) -> None:
        self.problems = problems

    def problem(self, path: str, description: str) -> None:
        self.problems.append(FieldViolation(_CARD, f"{path} {description}"))

    def object(self, value: Any, path: str) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.problem(path, "must be a JSON object")
        return None

    def list(self, value: Any, path: str) -> list[Any] | None:
        if isinstance(value, list):
            return value
        self.problem(path, "must be a JSON array")
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _check_card(
    problems: list[FieldViolation], registration: ModelRegistration
) -> ModelTensors | None:
    text = registration.card_json
    if not text.strip():
        return None
    if len(text.encode()) > MAX_CARD_BYTES:
        problems.append(FieldViolation(_CARD, f"must be at most {MAX_CARD_BYTES} bytes"))
        return None
    try:
        document = parse_json(text)
    except ValueError:
        problems.append(FieldViolation(_CARD, f"must be JSON, nested at most {MAX_DEPTH} deep"))
        return None
    card = _Card(problems)
    root = card.object(document, "the card")
    if root is None:
        return None
    model = card.object(root.get("model"), "model")
    tensors = None
    if model is not None:
        _check_card_model(card, model, registration)
        tensors = _card_tensors(card, model, len(registration.features))
    _check_card_features(card, root.get("features"), registration.features)
    _check_card_output(card, root.get("output"), registration.task)
    return tensors


def _check_card_model(card: _Card, model: dict[str, Any], registration: ModelRegistration) -> None:
    if model.get("name") != registration.name:
        card.problem("model.name", "differs from model.name")
    version = model.get("version")
    if isinstance(version, bool) or version != registration.version:
        card.problem("model.version", "differs from model.version")
    if model.get("sha256") != registration.digest.hex():
        card.problem("model.sha256", "differs from model.digest")
    if model.get("file", MODEL_FILE) != MODEL_FILE:
        card.problem("model.file", f"must be {MODEL_FILE} (the file Triton loads)")


def _card_tensors(card: _Card, model: dict[str, Any], n_features: int) -> ModelTensors | None:
    inputs = _tensors(card, model.get("inputs"), "model.inputs")
    outputs = _tensors(card, model.get("outputs"), "model.outputs")
    if inputs is None or outputs is None:
        return None
    # The service feeds a model its features as one row each: one tensor [batch, n].
    if len(inputs) != 1 or inputs[0].shape != (-1, n_features):
        card.problem("model.inputs", "must be one tensor of shape [-1, number of features]")
        return None
    return ModelTensors(inputs, outputs)


def _tensors(card: _Card, value: Any, path: str) -> tuple[Tensor, ...] | None:
    items = card.list(value, path)
    if items is None:
        return None
    if not 1 <= len(items) <= MAX_TENSORS:
        card.problem(path, f"must list 1 to {MAX_TENSORS} tensors")
        return None
    tensors = [_tensor(card, item, f"{path}[{index}]") for index, item in enumerate(items)]
    found = [t for t in tensors if t is not None]
    if len(found) != len(tensors):
        return None
    if len({t.name for t in found}) != len(found):
        card.problem(path, "names a tensor twice")
        return None
    return tuple(found)


def _tensor(card: _Card, item: Any, where: str) -> Tensor | None:
    tensor = card.object(item, where)
    if tensor is None:
        return None
    name, datatype, dims = tensor.get("name"), tensor.get("datatype"), tensor.get("dims")
    problems = len(card.problems)
    if not isinstance(name, str) or not TENSOR_NAME.fullmatch(name):
        card.problem(f"{where}.name", "must be a tensor name")
    if datatype not in DATATYPES:
        card.problem(f"{where}.datatype", "must be a Triton data type (e.g. FP32)")
    if (
        not isinstance(dims, list)
        or not 1 <= len(dims) <= MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in dims)
    ):
        card.problem(f"{where}.dims", f"must be 1 to {MAX_DIMS} sizes (-1: any)")
    if len(card.problems) != problems or not isinstance(dims, list):
        return None
    return Tensor(str(name), str(datatype), tuple(int(d) for d in dims))


def _check_card_features(card: _Card, value: Any, features: Sequence[FeatureDefinition]) -> None:
    items = card.list(value, "features")
    if items is None:
        return
    if len(items) != len(features):
        card.problem("features", "must list the same features as model.features")
        return
    for index, (item, feature) in enumerate(zip(items, features, strict=True)):
        where = f"features[{index}]"
        entry = card.object(item, where)
        if entry is None:
            continue
        ours = f"model.features[{index}]"
        if entry.get("name") != feature.name:
            card.problem(f"{where}.name", f"differs from {ours}.name")
        code = entry.get("code")
        if not isinstance(code, dict) or code.get("code") != feature.code:
            card.problem(f"{where}.code.code", f"differs from {ours}.loinc_code")
        elif code.get("system") != feature.system:
            card.problem(f"{where}.code.system", f"differs from {ours}.code_system")
        unit = entry.get("unit")
        if (unit or "") != feature.unit or not isinstance(unit, str | None):
            card.problem(f"{where}.unit", f"differs from {ours}.unit")
        elif unit is None and not entry.get("categories"):
            card.problem(f"{where}.categories", "are required for a value without a unit")
        bounds = entry.get("plausible_range")
        low = _number(bounds.get("low")) if isinstance(bounds, dict) else None
        high = _number(bounds.get("high")) if isinstance(bounds, dict) else None
        if low != feature.min_value or high != feature.max_value:
            card.problem(f"{where}.plausible_range", f"differs from {ours}.min_value and max_value")


def _check_card_output(card: _Card, value: Any, task: ModelTask | None) -> None:
    output = card.object(value, "output")
    if output is None:
        return
    score = output.get("score")
    kind = score.get("kind") if isinstance(score, dict) else None
    if task is not None and kind != SCORE_KINDS[task]:
        card.problem("output.score.kind", "does not match model.task")
