"""Training, with fixed seeds, on data sets that ship inside scikit-learn (nothing is downloaded).

Each model holds out a test split that training never sees; the card's metrics are measured on
it, and a cross-validation on the training split says how much they vary. BLAS runs on one
thread meanwhile so that the fitted numbers, and so the ONNX bytes, do not depend on the
machine's core count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    log_loss,
    mean_absolute_error,
    r2_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
)
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from medledger.models.catalogue import BREAST_CANCER_MALIGNANCY, DIABETES_PROGRESSION, ModelSpec

SEED = 13
CV_FOLDS = 5

Matrix = npt.NDArray[np.float32]
Vector = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DataSet:
    """Where the rows came from, for the card."""

    name: str
    loader: str
    citation: str
    rows: int
    target: str


@dataclass(frozen=True)
class TrainedModel:
    spec: ModelSpec
    estimator: Any  # a fitted scikit-learn estimator
    data: DataSet
    x_train: Matrix
    x_test: Matrix
    y_train: Vector
    y_test: Vector
    hyperparameters: dict[str, Any]
    split: str
    # Held-out metrics and cross-validation on the training split (name -> value).
    metrics: dict[str, float]
    cross_validation: dict[str, float]
    # The same split scored by the simpler or fuller model this one was chosen over.
    comparison: dict[str, float]

    @property
    def reference(self) -> Matrix:
        """The explanation baseline: each feature's median over the training split (a value
        some training patient has, for an odd count), as float32 like the model's input."""
        return np.median(self.x_train, axis=0).astype(np.float32)

    def predict_sklearn(self, x: Matrix) -> npt.NDArray[np.float64]:
        """The score as scikit-learn computes it (float64), for checking the ONNX export."""
        if self.spec.task == "regression":
            return np.asarray(self.estimator.predict(x), dtype=np.float64)
        return np.asarray(self.estimator.predict_proba(x)[:, 1], dtype=np.float64)


def _train_diabetes_progression() -> TrainedModel:
    spec = DIABETES_PROGRESSION
    bunch = load_diabetes(scaled=False)
    # Trees compare float32 inputs (scikit-learn casts, and ORT's tree operators only take
    # float32): training on float32 keeps the thresholds where the ONNX model puts them.
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.float64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=SEED)
    hyperparameters: dict[str, Any] = {
        "n_estimators": 150,
        "max_depth": 2,
        "learning_rate": 0.05,
        "subsample": 0.8,
        "loss": "squared_error",
        "random_state": SEED,
    }
    estimator = GradientBoostingRegressor(**hyperparameters)
    estimator.fit(x_train, y_train)
    predicted = estimator.predict(x_test)
    mean_only = np.full_like(y_test, y_train.mean())
    metrics = {
        "r2": float(r2_score(y_test, predicted)),
        "mae": float(mean_absolute_error(y_test, predicted)),
        "rmse": float(root_mean_squared_error(y_test, predicted)),
        "mae_of_predicting_the_training_mean": float(mean_absolute_error(y_test, mean_only)),
    }
    folds = KFold(CV_FOLDS, shuffle=True, random_state=SEED)
    r2 = cross_val_score(
        GradientBoostingRegressor(**hyperparameters), x_train, y_train, cv=folds, scoring="r2"
    )
    linear = LinearRegression().fit(x_train, y_train)
    return TrainedModel(
        spec=spec,
        estimator=estimator,
        data=DataSet(
            name="Diabetes (Efron, Hastie, Johnstone and Tibshirani 2004)",
            loader="sklearn.datasets.load_diabetes(scaled=False)",
            citation="B. Efron, T. Hastie, I. Johnstone, R. Tibshirani (2004). Least Angle"
            " Regression. Annals of Statistics 32(2), 407-499.",
            rows=len(y),
            target="quantitative measure of disease progression one year after baseline",
        ),
        x_train=x_train,
        x_test=x_test,
        y_train=y_train,
        y_test=y_test,
        hyperparameters=hyperparameters,
        split=f"train_test_split(test_size=0.2, random_state={SEED})",
        metrics=metrics,
        cross_validation={
            "folds": CV_FOLDS,
            "r2_mean": float(r2.mean()),
            "r2_std": float(r2.std()),
        },
        comparison={"r2_linear_regression": float(r2_score(y_test, linear.predict(x_test)))},
    )


def _train_breast_cancer_malignancy() -> TrainedModel:
    spec = BREAST_CANCER_MALIGNANCY
    bunch = load_breast_cancer()
    names = [str(name) for name in bunch.feature_names]
    columns = [names.index(name) for name in spec.feature_names]
    x = np.asarray(bunch.data[:, columns], dtype=np.float32)
    # scikit-learn codes malignant as 0; the model's positive class (column 1) is malignant.
    y = (np.asarray(bunch.target) == 0).astype(np.float64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=SEED, stratify=y
    )
    logistic: dict[str, Any] = {"C": 1.0, "solver": "lbfgs", "max_iter": 1000}
    hyperparameters = {"scaler": "StandardScaler()", "penalty": "l2", **logistic}

    def make() -> Pipeline:
        return Pipeline([("scale", StandardScaler()), ("logistic", LogisticRegression(**logistic))])

    estimator = make()
    estimator.fit(x_train, y_train)
    probability = estimator.predict_proba(x_test)[:, 1]
    predicted = (probability > 0.5).astype(np.float64)
    metrics = {
        "roc_auc": float(roc_auc_score(y_test, probability)),
        "accuracy": float(accuracy_score(y_test, predicted)),
        "sensitivity": float(recall_score(y_test, predicted, pos_label=1)),
        "specificity": float(recall_score(y_test, predicted, pos_label=0)),
        "brier_score": float(brier_score_loss(y_test, probability)),
        "log_loss": float(log_loss(y_test, probability)),
        "prevalence": float(y_test.mean()),
    }
    folds = StratifiedKFold(CV_FOLDS, shuffle=True, random_state=SEED)
    auc = cross_val_score(make(), x_train, y_train, cv=folds, scoring="roc_auc")
    everything = np.asarray(bunch.data, dtype=np.float32)
    train_all, test_all = train_test_split(
        everything, test_size=0.25, random_state=SEED, stratify=y
    )
    all_features = make().fit(train_all, y_train).predict_proba(test_all)[:, 1]
    return TrainedModel(
        spec=spec,
        estimator=estimator,
        data=DataSet(
            name="Breast Cancer Wisconsin (Diagnostic)",
            loader="sklearn.datasets.load_breast_cancer(), columns 20-29 ('worst' features)",
            citation="W. N. Street, W. H. Wolberg, O. L. Mangasarian (1993). Nuclear feature"
            " extraction for breast tumor diagnosis. IS&T/SPIE Biomedical Image Processing and"
            " Biomedical Visualization, vol. 1905, 861-870.",
            rows=len(y),
            target="diagnosis: malignant (1) or benign (0)",
        ),
        x_train=x_train,
        x_test=x_test,
        y_train=y_train,
        y_test=y_test,
        hyperparameters=hyperparameters,
        split=f"train_test_split(test_size=0.25, random_state={SEED}, stratify=diagnosis)",
        metrics=metrics,
        cross_validation={
            "folds": CV_FOLDS,
            "roc_auc_mean": float(auc.mean()),
            "roc_auc_std": float(auc.std()),
        },
        comparison={"roc_auc_all_30_features": float(roc_auc_score(y_test, all_features))},
    )


_TRAINERS: dict[str, Callable[[], TrainedModel]] = {
    DIABETES_PROGRESSION.name: _train_diabetes_progression,
    BREAST_CANCER_MALIGNANCY.name: _train_breast_cancer_malignancy,
}


def train(spec: ModelSpec) -> TrainedModel:
    with threadpool_limits(limits=1):
        return _TRAINERS[spec.name]()


def log_odds_coefficients(trained: TrainedModel) -> tuple[float, Vector]:
    """For the logistic model: intercept and per-feature coefficients in the features' own
    units, so that log-odds = intercept + coefficients . x (the scaler folded in)."""
    scaler = trained.estimator.named_steps["scale"]
    logistic = trained.estimator.named_steps["logistic"]
    scale = np.asarray(scaler.scale_, dtype=np.float64)
    mean = np.asarray(scaler.mean_, dtype=np.float64)
    weights = np.asarray(logistic.coef_[0], dtype=np.float64)
    coefficients = weights / scale
    intercept = float(logistic.intercept_[0]) - float(np.dot(coefficients, mean))
    return intercept, coefficients
