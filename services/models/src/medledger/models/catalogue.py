"""The models medledger ships: names, versions, tensors and what their outputs mean.

One ``ModelSpec`` per model is the single source of both Triton layouts, the ONNX export's
tensor names and types, and the model card. Training choices live in ``training``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from medledger.models.features import BREAST_CANCER_FEATURES, DIABETES_FEATURES, Feature

Task = Literal["regression", "binary-classification"]
DataType = Literal["FP32", "INT64"]
ScoreKind = Literal["regression", "probability"]

INPUT_TENSOR: Final = "features"
# Triton rejects a request whose batch is larger; exact Shapley values enumerate 2^n rows of
# feature mixes (1,024 for n = 10) for one patient, and BatchPredict sends several at once.
MAX_BATCH_SIZE: Final = 4096


@dataclass(frozen=True)
class Tensor:
    """A model input or output: Triton's name, type and shape without the batch dimension."""

    name: str
    datatype: DataType
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Score:
    """Where the score is in the outputs (``tensor[:, column]``) and what kind of number it is."""

    tensor: str
    column: int
    kind: ScoreKind
    meaning: str
    label_tensor: str | None = None
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: int
    title: str
    task: Task
    features: tuple[Feature, ...]
    outputs: tuple[Tensor, ...]
    score: Score
    # ORT's tree-ensemble operators run on CPU only; a linear model runs on the GPU.
    runs_on_gpu: bool
    algorithm: str

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        return (Tensor(INPUT_TENSOR, "FP32", (len(self.features),)),)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)


DIABETES_PROGRESSION: Final = ModelSpec(
    name="diabetes-progression",
    version=1,
    title="Diabetes disease progression at one year",
    task="regression",
    features=DIABETES_FEATURES,
    outputs=(Tensor("progression", "FP32", (1,)),),
    score=Score(
        tensor="progression",
        column=0,
        kind="regression",
        meaning="Predicted quantitative measure of diabetes disease progression one year after"
        " baseline, on the source study's scale (25-346 in the data; higher is worse)",
    ),
    runs_on_gpu=False,
    algorithm="GradientBoostingRegressor (scikit-learn), 150 trees of depth 2",
)

BREAST_CANCER_MALIGNANCY: Final = ModelSpec(
    name="breast-cancer-malignancy",
    version=1,
    title="Breast mass malignancy from fine-needle aspirate cytology",
    task="binary-classification",
    features=BREAST_CANCER_FEATURES,
    outputs=(
        Tensor("label", "INT64", (1,)),
        Tensor("probabilities", "FP32", (2,)),
    ),
    score=Score(
        tensor="probabilities",
        column=1,
        kind="probability",
        meaning="Probability that the breast mass is malignant",
        label_tensor="label",
        labels=("benign", "malignant"),
    ),
    runs_on_gpu=True,
    algorithm="LogisticRegression (scikit-learn, L2, C=1) on standardised features",
)

MODELS: Final = (DIABETES_PROGRESSION, BREAST_CANCER_MALIGNANCY)


def model_spec(name: str) -> ModelSpec:
    for spec in MODELS:
        if spec.name == name:
            return spec
    raise KeyError(name)
