"""What Predict needs to know of a registered model, read from its model card.

The card is the JSON ``make models`` writes beside each ONNX file (``model-card.json``, schema
:data:`CARD_SCHEMA`, :mod:`medledger.models.card`). :func:`parse_model_card` reads it strictly
and returns a :class:`ModelDefinition`:

- the model: name, version, title and the SHA-256 of its ONNX file;
- the input tensor (one FP32 tensor ``[-1, n]``) and its ``n`` features in input order, each a
  :class:`~medledger.inference.domain.features.Feature` (code, UCUM unit, plausible range as
  the accepted range, reference value, molar mass) with how its value becomes the model's input
  (:class:`Transform`: ``identity`` or ``ln``), and, for a coded feature (sex), the codes it
  takes (:class:`Category`: administrative-gender ``female`` -> 1, ``male`` -> 2);
- the reference row (each feature's ``reference.model_input``): the baseline of the
  contributions, and ``base_score`` = f(reference) as computed at build time;
- the score: which output tensor and column, and whether it is a ``regression`` value or the
  ``probability`` of the positive label; and the label rule, when the card has one ("1
  (malignant) when the score is above 0.5").

Every problem in the card is collected and raised at once as :class:`ModelCardInvalid`, each
naming the path in the card (``features[3].plausible_range.low``) and the rule broken; the
card is the registry's, not a patient's, so the messages may name its fields.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from medledger.common.bounded_json import parse_json
from medledger.common.ucum import is_ucum
from medledger.inference.domain.explain import MAX_EXACT_FEATURES
from medledger.inference.domain.features import Coding, Feature

CARD_SCHEMA: Final = "https://medledger.dev/schemas/model-card/v1"
MODEL_IDENTIFIER_SYSTEM: Final = "https://medledger.dev/fhir/NamingSystem/model"
"""The cards' (and the AI Device's) identifier system for ``name|version``."""
URI_SYSTEM: Final = "urn:ietf:rfc:3986"
"""Identifier system of a value that is itself a URI (``urn:sha256:<hex>``)."""
CODED_UNIT: Final = "1"
"""The UCUM unit a coded feature's model input is in: a pure number."""

# A Triton model name that is also a FHIR id (as the registry requires).
MODEL_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}")
MAX_VERSION: Final = 2**63 - 1
SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
TENSOR_NAME: Final = re.compile(r"[A-Za-z0-9_.\-:]{1,128}")
_FEATURE_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.\- ]{0,63}")
# FHIR's code: no leading, trailing or double whitespace; a system is an absolute URI.
_CODE: Final = re.compile(r"[^\s]+( [^\s]+)*")
_SYSTEM: Final = re.compile(r"[a-z][a-z0-9+.\-]*:[^\s]{1,250}")
# The label rule as the model build writes it (medledger.models.card._output).
_LABEL_RULE: Final = re.compile(
    r"(?P<value>[0-9]+) \((?P<label>[^()]+)\) when the score is above "
    r"(?P<threshold>-?[0-9]+(\.[0-9]+)?)"
)
# The cards' explanation.space for each score kind.
_SPACES: Final = {"probability": "probability", "regression": "the score's own units"}
# How close reference.model_input must be to the transformed reference.value (the card rounds
# the value it shows to 6 significant digits).
_REFERENCE_TOLERANCE: Final = 1e-5


class ModelCardInvalid(ValueError):
    """The card cannot define a model for Predict; ``problems`` lists each, as
    ``path: what is wrong``."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("the model card is not usable: " + "; ".join(problems))
        self.problems = tuple(problems)


class Transform(StrEnum):
    """How a feature's value (in its unit) becomes the model's input."""

    IDENTITY = "identity"
    LN = "ln"
    """The natural logarithm (triglycerides in the diabetes model)."""

    def apply(self, value: float) -> float:
        return math.log(value) if self is Transform.LN else value


class ScoreKind(StrEnum):
    """What the score is: a predicted quantity, or the probability of the positive label."""

    REGRESSION = "regression"
    PROBABILITY = "probability"


class ContributionSpace(StrEnum):
    """Where ``base_score + sum(contributions) = score`` holds: in probability (a
    classifier's score), or in the score's own units (a regression)."""

    PROBABILITY = "probability"
    SCORE = "score"


def as_float32(value: float) -> float:
    """``value`` rounded to the nearest float32, as a Python float (exactly that float32)."""
    return float(np.float32(value))


@dataclass(frozen=True)
class Category:
    """One code a coded feature takes, and the number the model was trained on for it."""

    coding: Coding
    model_input: float
    display: str | None = None


@dataclass(frozen=True)
class ModelFeature:
    """One model input: ``feature`` says where its value comes from and what is accepted
    (for a coded feature: unit :data:`CODED_UNIT`, its range that of the categories' inputs),
    ``transform`` how the value becomes the input, ``reference_input`` its reference as the
    model takes it."""

    index: int
    feature: Feature
    display: str | None
    description: str
    transform: Transform
    reference_input: float
    categories: tuple[Category, ...] = ()

    @property
    def name(self) -> str:
        return self.feature.name

    @property
    def code(self) -> Coding:
        """The coding the card names for this feature (its Observations carry it)."""
        return self.feature.codes[0]

    @property
    def unit(self) -> str:
        return self.feature.unit

    @property
    def is_coded(self) -> bool:
        return bool(self.categories)

    def model_input(self, value: float) -> float:
        """The model's input (float32) for a value in the feature's unit, already checked to
        lie in its range (so ``ln`` sees a positive number)."""
        return as_float32(self.transform.apply(value))

    def category(self, coding: Coding) -> Category | None:
        """The category of ``coding``, if the model has one for it."""
        return next((c for c in self.categories if c.coding == coding), None)


@dataclass(frozen=True)
class ScoreOutput:
    """Where the score is in the model's outputs: ``tensor[:, column]``."""

    tensor: str
    column: int
    kind: ScoreKind
    meaning: str


@dataclass(frozen=True)
class LabelRule:
    """``above`` when the score is above ``threshold``, else ``otherwise``."""

    threshold: float
    above: str
    otherwise: str

    def label(self, score: float) -> str:
        return self.above if score > self.threshold else self.otherwise

    @property
    def text(self) -> str:
        return f"{self.above} when the score is above {self.threshold:g}, else {self.otherwise}"


@dataclass(frozen=True)
class ModelDefinition:
    """A registered model as Predict uses it (see the module documentation)."""

    name: str
    version: int
    title: str
    algorithm: str
    digest: bytes
    input_tensor: str
    features: tuple[ModelFeature, ...]
    score: ScoreOutput
    label_rule: LabelRule | None
    base_score: float

    @property
    def digest_hex(self) -> str:
        return self.digest.hex()

    @property
    def digest_uri(self) -> str:
        """``urn:sha256:<hex>``: the ONNX file's name as a URI (the AI Device's identifier)."""
        return f"urn:sha256:{self.digest.hex()}"

    @property
    def reference(self) -> str:
        """``name|version``: the model's identifier value and method code."""
        return f"{self.name}|{self.version}"

    @property
    def contribution_space(self) -> ContributionSpace:
        return (
            ContributionSpace.PROBABILITY
            if self.score.kind is ScoreKind.PROBABILITY
            else ContributionSpace.SCORE
        )

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def reference_row(self) -> NDArray[np.float32]:
        """The reference inputs (float32, ``[n]``): the baseline of the contributions."""
        return np.array([f.reference_input for f in self.features], dtype=np.float32)

    def label(self, score: float) -> str | None:
        """The label of ``score`` by the card's rule; None when the card has no rule."""
        return None if self.label_rule is None else self.label_rule.label(score)


def parse_model_card(card: Mapping[str, Any] | str | bytes) -> ModelDefinition:
    """The model a card defines (parsed JSON, or its text); :class:`ModelCardInvalid` listing
    every problem."""
    if isinstance(card, str | bytes):
        try:
            card = parse_json(card)
        except ValueError:
            raise ModelCardInvalid(["(card): not JSON"]) from None
    reader = _Reader()
    definition = reader.card(card)
    if reader.problems or definition is None:
        raise ModelCardInvalid(reader.problems or ["(card): not a model card"])
    return definition


class _Missing(Exception):
    """A value the rest of the card depends on is unusable (already reported)."""


class _Reader:
    """Reads the card, noting each problem with its path and going on where it can."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def need(self, path: str, message: str) -> _Missing:
        self.fail(path, message)
        return _Missing()

    # -- JSON values ---------------------------------------------------------------------------

    def mapping(self, value: object, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.need(path, "an object is required")
        return value

    def string(
        self, parent: Mapping[str, Any], key: str, path: str, pattern: re.Pattern[str] | None = None
    ) -> str:
        value = parent.get(key)
        if not isinstance(value, str) or not value:
            raise self.need(f"{path}.{key}", "a non-empty string is required")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.need(f"{path}.{key}", f"does not match {pattern.pattern}")
        return value

    def optional_string(self, parent: Mapping[str, Any], key: str, path: str) -> str | None:
        if parent.get(key) is None:
            return None
        return self.string(parent, key, path)

    def number(self, parent: Mapping[str, Any], key: str, path: str) -> float:
        value = parent.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.need(f"{path}.{key}", "a number is required")
        if not math.isfinite(value):
            raise self.need(f"{path}.{key}", "a finite number is required")
        return float(value)

    def integer(self, parent: Mapping[str, Any], key: str, path: str) -> int:
        value = parent.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.need(f"{path}.{key}", "an integer is required")
        return value

    def array(self, parent: Mapping[str, Any], key: str, path: str) -> list[Any]:
        value = parent.get(key)
        if not isinstance(value, list):
            raise self.need(f"{path}.{key}", "an array is required")
        return value

    def coding(self, value: object, path: str) -> tuple[Coding, str | None]:
        concept = self.mapping(value, path)
        system = self.string(concept, "system", path, _SYSTEM)
        code = self.string(concept, "code", path, _CODE)
        return Coding(system, code), self.optional_string(concept, "display", path)

    # -- the card ------------------------------------------------------------------------------

    def card(self, card: object) -> ModelDefinition | None:
        try:
            root = self.mapping(card, "(card)")
            if root.get("schema") != CARD_SCHEMA:
                raise self.need("schema", f"must be {CARD_SCHEMA}")
            model = self.mapping(root.get("model"), "model")
        except _Missing:
            return None
        parts: dict[str, Any] = {}
        for name, read in (
            ("identity", lambda: self.identity(model)),
            ("input", lambda: self.input_tensor(model)),
            ("outputs", lambda: self.outputs(model)),
            ("base_score", lambda: self.base_score(root)),
        ):
            with contextlib.suppress(_Missing):
                parts[name] = read()
        features = self.features(root, parts.get("input"))
        try:
            score, label_rule = self.output(root, parts.get("outputs"))
            self.space(root, score.kind)
        except _Missing:
            return None
        if self.problems or features is None or len(parts) < 4:
            return None
        name, version, title, algorithm, digest = parts["identity"]
        input_tensor, _ = parts["input"]
        return ModelDefinition(
            name=name,
            version=version,
            title=title,
            algorithm=algorithm,
            digest=digest,
            input_tensor=input_tensor,
            features=features,
            score=score,
            label_rule=label_rule,
            base_score=parts["base_score"],
        )

    def identity(self, model: Mapping[str, Any]) -> tuple[str, int, str, str, bytes]:
        name = self.string(model, "name", "model", MODEL_NAME)
        version = self.integer(model, "version", "model")
        if not 1 <= version <= MAX_VERSION:
            raise self.need("model.version", f"must be in 1..{MAX_VERSION}")
        title = self.string(model, "title", "model")
        algorithm = self.string(model, "algorithm", "model")
        digest = self.string(model, "sha256", "model", SHA256_HEX)
        return name, version, title, algorithm, bytes.fromhex(digest)

    def input_tensor(self, model: Mapping[str, Any]) -> tuple[str, int]:
        inputs = self.array(model, "inputs", "model")
        if len(inputs) != 1:
            raise self.need("model.inputs", "the model takes exactly one input tensor")
        tensor = self.mapping(inputs[0], "model.inputs[0]")
        name = self.string(tensor, "name", "model.inputs[0]", TENSOR_NAME)
        if tensor.get("datatype") != "FP32":
            raise self.need("model.inputs[0].datatype", "must be FP32")
        dims = tensor.get("dims")
        if (
            not isinstance(dims, list)
            or len(dims) != 2
            or dims[0] != -1
            or isinstance(dims[1], bool)
            or not isinstance(dims[1], int)
            or dims[1] < 1
        ):
            raise self.need("model.inputs[0].dims", "must be [-1, n] (a batch of n features)")
        return name, dims[1]

    def outputs(self, model: Mapping[str, Any]) -> dict[str, tuple[str, list[Any]]]:
        found: dict[str, tuple[str, list[Any]]] = {}
        for index, value in enumerate(self.array(model, "outputs", "model")):
            path = f"model.outputs[{index}]"
            tensor = self.mapping(value, path)
            name = self.string(tensor, "name", path, TENSOR_NAME)
            dims = tensor.get("dims")
            if name in found:
                raise self.need(f"{path}.name", "names another output already listed")
            found[name] = (str(tensor.get("datatype")), dims if isinstance(dims, list) else [])
        return found

    def base_score(self, root: Mapping[str, Any]) -> float:
        return self.number(
            self.mapping(root.get("explanation"), "explanation"), "base_score", "explanation"
        )

    def space(self, root: Mapping[str, Any], kind: ScoreKind) -> None:
        explanation = self.mapping(root.get("explanation"), "explanation")
        if explanation.get("space") != _SPACES[kind]:
            self.fail(
                "explanation.space",
                f"must be {_SPACES[kind]!r} for a {kind} score (where the contributions add up)",
            )

    def features(
        self, root: Mapping[str, Any], tensor: tuple[str, int] | None
    ) -> tuple[ModelFeature, ...] | None:
        try:
            rows = self.array(root, "features", "(card)")
        except _Missing:
            return None
        if not 1 <= len(rows) <= MAX_EXACT_FEATURES:
            self.fail(
                "features",
                f"1 to {MAX_EXACT_FEATURES} features (exact contributions score all 2^n mixes)",
            )
            return None
        if tensor is not None and tensor[1] != len(rows):
            self.fail("model.inputs[0].dims", "must be [-1, n] with n the number of features")
        features: list[ModelFeature] = []
        for index, row in enumerate(rows):
            try:
                features.append(self.feature(row, index))
            except _Missing:
                continue
        names = [f.name for f in features]
        codes = [f.code for f in features]
        for feature in features:
            if names.count(feature.name) > 1:
                self.fail(f"features[{feature.index}].name", "names another feature too")
            if codes.count(feature.code) > 1:
                self.fail(
                    f"features[{feature.index}].code",
                    "another feature has this code (they would read the same Observation)",
                )
        return tuple(features) if len(features) == len(rows) else None

    def feature(self, row: object, index: int) -> ModelFeature:
        path = f"features[{index}]"
        data = self.mapping(row, path)
        if data.get("index") != index:
            raise self.need(f"{path}.index", "must be the feature's position in the input row")
        name = self.string(data, "name", path, _FEATURE_NAME)
        description = self.optional_string(data, "description", path) or ""
        coding, display = self.coding(data.get("code"), f"{path}.code")
        transform_name = data.get("transform")
        if transform_name not in set(Transform):
            raise self.need(f"{path}.transform", "must be identity or ln")
        transform = Transform(str(transform_name))
        bounds = self.mapping(data.get("plausible_range"), f"{path}.plausible_range")
        low = self.number(bounds, "low", f"{path}.plausible_range")
        high = self.number(bounds, "high", f"{path}.plausible_range")
        if low > high:
            raise self.need(f"{path}.plausible_range", "low is above high")
        if transform is Transform.LN and low <= 0:
            raise self.need(f"{path}.plausible_range.low", "must be positive for ln")
        reference = self.mapping(data.get("reference"), f"{path}.reference")
        reference_input = self.number(reference, "model_input", f"{path}.reference")
        reference_value = self.number(reference, "value", f"{path}.reference")
        if not low <= reference_value <= high:
            raise self.need(f"{path}.reference.value", "must lie in the plausible range")
        expected = transform.apply(reference_value)
        if abs(reference_input - expected) > _REFERENCE_TOLERANCE * max(1.0, abs(expected)):
            raise self.need(
                f"{path}.reference.model_input", "must be the transform of reference.value"
            )
        molar_mass: float | None = None
        if data.get("molar_mass_g_per_mol") is not None:
            molar_mass = self.number(data, "molar_mass_g_per_mol", path)
            if molar_mass <= 0:
                raise self.need(f"{path}.molar_mass_g_per_mol", "must be positive")
        categories = self.categories(data, path, low, high)
        unit = self.unit(data, path, transform, coded=bool(categories))
        try:
            feature = Feature(
                name, (coding,), unit, low, high, reference_value, molar_mass=molar_mass
            )
        except ValueError as error:
            raise self.need(path, str(error)) from None
        return ModelFeature(
            index=index,
            feature=feature,
            display=display,
            description=description,
            transform=transform,
            reference_input=as_float32(reference_input),
            categories=categories,
        )

    def unit(self, data: Mapping[str, Any], path: str, transform: Transform, *, coded: bool) -> str:
        unit = data.get("unit")
        if coded:
            if unit is not None:
                raise self.need(f"{path}.unit", "must be null for a coded feature")
            if transform is not Transform.IDENTITY:
                raise self.need(f"{path}.transform", "must be identity for a coded feature")
            return CODED_UNIT
        if not isinstance(unit, str) or not is_ucum(unit):
            raise self.need(f"{path}.unit", "a UCUM unit is required (null only with categories)")
        return unit

    def categories(
        self, data: Mapping[str, Any], path: str, low: float, high: float
    ) -> tuple[Category, ...]:
        if data.get("categories") is None:
            return ()
        rows = self.array(data, "categories", path)
        if not rows:
            raise self.need(f"{path}.categories", "at least one category, or leave it out")
        categories: list[Category] = []
        for index, row in enumerate(rows):
            where = f"{path}.categories[{index}]"
            category = self.mapping(row, where)
            coding, display = self.coding(category.get("coding"), f"{where}.coding")
            model_input = self.number(category, "model_input", where)
            if not low <= model_input <= high:
                raise self.need(f"{where}.model_input", "must lie in the plausible range")
            if any(c.coding == coding for c in categories):
                raise self.need(f"{where}.coding", "names another category's code")
            categories.append(Category(coding, as_float32(model_input), display))
        return tuple(categories)

    def output(
        self, root: Mapping[str, Any], outputs: Mapping[str, tuple[str, list[Any]]] | None
    ) -> tuple[ScoreOutput, LabelRule | None]:
        output = self.mapping(root.get("output"), "output")
        score = self.mapping(output.get("score"), "output.score")
        tensor = self.string(score, "tensor", "output.score", TENSOR_NAME)
        column = self.integer(score, "column", "output.score")
        kind_name = score.get("kind")
        if kind_name not in set(ScoreKind):
            raise self.need("output.score.kind", "must be regression or probability")
        kind = ScoreKind(str(kind_name))
        meaning = self.string(score, "meaning", "output.score")
        if outputs is not None:
            if tensor not in outputs:
                raise self.need("output.score.tensor", "must be one of model.outputs")
            datatype, dims = outputs[tensor]
            if datatype != "FP32":
                self.fail("output.score.tensor", "the score's tensor must be FP32")
            width = dims[1] if len(dims) == 2 and isinstance(dims[1], int) else None
            if width is None or not 0 <= column < width:
                self.fail("output.score.column", "must be a column of the tensor's [-1, k]")
        label = output.get("label")
        rule = None if label is None else self.label_rule(label, kind)
        return ScoreOutput(tensor, column, kind, meaning), rule

    def label_rule(self, value: object, kind: ScoreKind) -> LabelRule:
        label = self.mapping(value, "output.label")
        values = self.mapping(label.get("values"), "output.label.values")
        if set(values) != {"0", "1"} or not all(
            isinstance(v, str) and _CODE.fullmatch(v) for v in values.values()
        ):
            raise self.need("output.label.values", 'must name labels "0" and "1"')
        rule = self.string(label, "rule", "output.label")
        match = _LABEL_RULE.fullmatch(rule)
        if match is None:
            raise self.need("output.label.rule", "must read 'V (LABEL) when the score is above T'")
        above = match["value"]
        if above not in values or values[above] != match["label"]:
            raise self.need("output.label.rule", "names a label that output.label.values lacks")
        threshold = float(match["threshold"])
        if kind is ScoreKind.PROBABILITY and not 0 < threshold < 1:
            raise self.need("output.label.rule", "a probability threshold lies in (0, 1)")
        otherwise = values["0" if above == "1" else "1"]
        return LabelRule(threshold, str(values[above]), str(otherwise))
