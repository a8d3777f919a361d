"""Exact contributions (medledger.inference.domain.explain): efficiency, symmetry, dummy
features, linear models against coef * (x - ref), and an independent permutation-based
Shapley computation written here."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from medledger.inference.domain.explain import (
    MAX_EXACT_FEATURES,
    Explanation,
    ScoreBatch,
    explain,
    explain_batch,
    linear_contributions,
    mix_count,
    mixes,
    shapley_values,
)

RowFunction = Callable[[NDArray[np.float32]], NDArray[Any]]


class CountingScorer:
    """A score_batch that remembers each call's rows."""

    def __init__(self, function: RowFunction) -> None:
        self.function = function
        self.calls: list[NDArray[np.float32]] = []

    async def __call__(self, rows: NDArray[np.float32]) -> NDArray[Any]:
        assert rows.dtype == np.float32
        self.calls.append(rows.copy())
        return self.function(rows)


def permutation_shapley(function: RowFunction, x: NDArray[Any], ref: NDArray[Any]) -> list[float]:
    """Shapley values by their definition over orderings: each feature's marginal gain when it
    switches from the reference to x, averaged over all n! orders (independent of the module's
    subset enumeration and weights)."""
    n = len(x)
    rows: list[NDArray[np.float32]] = []
    orders = list(itertools.permutations(range(n)))
    for order in orders:
        row = np.asarray(ref, dtype=np.float32).copy()
        rows.append(row.copy())
        for feature in order:
            row[feature] = np.float32(x[feature])
            rows.append(row.copy())
    scores = np.asarray(function(np.stack(rows)), dtype=np.float64).reshape(len(orders), n + 1)
    totals = [0.0] * n
    for order, path in zip(orders, scores, strict=True):
        for step, feature in enumerate(order):
            totals[feature] += float(path[step + 1] - path[step])
    return [t / math.factorial(n) for t in totals]


def as_rows(*rows: Any) -> NDArray[np.float32]:
    return np.array(rows, dtype=np.float32)


def tolerance(explanation: Explanation) -> float:
    scale = max(1.0, abs(explanation.score), abs(explanation.base_score))
    return float(1e-12 * scale * 2 ** len(explanation.x))


def assert_efficient(explanation: Explanation) -> None:
    gap = explanation.score - explanation.base_score - math.fsum(explanation.contributions)
    assert abs(gap) <= tolerance(explanation)
    assert abs(explanation.residual) <= tolerance(explanation)


def mlp(n: int, seed: int) -> RowFunction:
    """A small random tanh network: smooth, non-linear, with interactions."""
    rng = np.random.default_rng(seed)
    w1, b1, w2 = rng.normal(size=(n, 8)), rng.normal(size=8), rng.normal(size=8)

    def function(rows: NDArray[np.float32]) -> NDArray[np.float64]:
        return np.tanh(rows.astype(np.float64) @ w1 + b1) @ w2

    return function


NONLINEAR: dict[str, RowFunction] = {
    "product": lambda z: np.prod(z.astype(np.float64), axis=1),
    "max": lambda z: np.max(z, axis=1),
    "min-and-square": lambda z: np.min(z, axis=1) + z[:, 0].astype(np.float64) ** 2,
    "sine-of-sum": lambda z: np.sin(np.sum(z.astype(np.float64), axis=1)) * z[:, -1],
    "gaussian": lambda z: np.exp(-np.sum(z.astype(np.float64) ** 2, axis=1)),
    "threshold": lambda z: (z[:, 0] > 0.5).astype(np.float64) * np.abs(z).sum(axis=1),
}


@pytest.mark.parametrize("name", sorted(NONLINEAR))
@pytest.mark.parametrize("n", [1, 2, 5])
async def test_matches_permutation_shapley_on_nonlinear_functions(name: str, n: int) -> None:
    rng = np.random.default_rng(n)
    x, ref = rng.normal(size=n), rng.normal(size=n)
    scorer = CountingScorer(NONLINEAR[name])
    explanation = await explain(x, ref, scorer)
    assert len(scorer.calls) == 1
    assert scorer.calls[0].shape == (2**n, n)
    assert_efficient(explanation)
    expected = permutation_shapley(NONLINEAR[name], x, ref)
    assert explanation.contributions == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=6),
    name=st.sampled_from(sorted(NONLINEAR)),
    data=st.data(),
)
def test_property_efficiency_and_permutation_agreement(
    n: int, name: str, data: st.DataObject
) -> None:
    values = st.floats(min_value=-3, max_value=3, allow_nan=False, width=32)
    x = np.array(data.draw(st.lists(values, min_size=n, max_size=n)), dtype=np.float32)
    ref = np.array(data.draw(st.lists(values, min_size=n, max_size=n)), dtype=np.float32)
    function = NONLINEAR[name]
    explanation = asyncio.run(explain(x, ref, CountingScorer(function)))
    assert_efficient(explanation)
    assert explanation.score == pytest.approx(float(function(x[np.newaxis])[0]), abs=0)
    assert explanation.base_score == pytest.approx(float(function(ref[np.newaxis])[0]), abs=0)
    expected = permutation_shapley(function, x, ref)
    assert explanation.contributions == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("n", [10, MAX_EXACT_FEATURES])
async def test_efficiency_for_many_features(n: int) -> None:
    rng = np.random.default_rng(7)
    scorer = CountingScorer(mlp(n, seed=n))
    explanation = await explain(rng.normal(size=n), rng.normal(size=n), scorer)
    assert len(scorer.calls) == 1
    assert scorer.calls[0].shape == (2**n, n)
    assert_efficient(explanation)
    assert abs(explanation.residual) < 1e-10


async def test_float32_scores_as_a_served_model_returns_them() -> None:
    function = mlp(6, seed=3)
    scorer = CountingScorer(lambda z: function(z).astype(np.float32)[:, np.newaxis])  # [m, 1]
    rng = np.random.default_rng(3)
    explanation = await explain(rng.normal(size=6), rng.normal(size=6), scorer)
    assert_efficient(explanation)
    assert explanation.score == float(np.float32(function(as_rows(explanation.x))[0]))


async def test_symmetric_features_with_equal_values_get_equal_contributions() -> None:
    def function(z: NDArray[np.float32]) -> NDArray[np.float64]:
        a, b, c = (z[:, i].astype(np.float64) for i in range(3))
        return a * b * c + (a + b) ** 2 + np.maximum(a, b) - c

    explanation = await explain([1.5, 1.5, -0.5], [0.25, 0.25, 2.0], CountingScorer(function))
    assert explanation.contributions[0] == pytest.approx(explanation.contributions[1], rel=1e-14)
    assert_efficient(explanation)


async def test_a_feature_the_model_ignores_or_at_its_reference_gets_exactly_zero() -> None:
    def function(z: NDArray[np.float32]) -> NDArray[np.float64]:
        kept = z[:, [0, 1, 2, 4]].astype(np.float64)  # ignores z[:, 3]
        return np.asarray(np.prod(kept[:, :3], axis=1) + np.exp(kept[:, 3]))

    explanation = await explain(
        [2.0, -2.0, 3.0, 9.0, 0.5], [1.0, 1.0, 3.0, -4.0, 0.1], CountingScorer(function)
    )
    assert explanation.contributions[3] == 0.0  # ignored
    assert explanation.contributions[2] == 0.0  # x equals the reference
    assert all(c != 0.0 for i, c in enumerate(explanation.contributions) if i not in (2, 3))
    assert_efficient(explanation)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(min_value=1, max_value=8), seed=st.integers(min_value=0, max_value=2**32))
def test_linear_model_contributions_are_coef_times_difference(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    coef, intercept = rng.normal(size=n) * 10, float(rng.normal())
    explanation = asyncio.run(
        explain(
            rng.normal(size=n) * 50,
            rng.normal(size=n) * 50,
            CountingScorer(lambda z: z.astype(np.float64) @ coef + intercept),
        )
    )
    expected = linear_contributions(coef, explanation.x, explanation.reference)
    assert explanation.contributions == pytest.approx(list(expected), rel=1e-10, abs=1e-9)
    assert_efficient(explanation)


def test_linear_contributions_is_coef_times_difference() -> None:
    assert list(linear_contributions([2.0, -1.0], [3.0, 5.0], [1.0, 1.0])) == [4.0, -4.0]
    with pytest.raises(ValueError, match="one value a feature"):
        linear_contributions([1.0, 2.0], [1.0], [1.0, 2.0])


async def test_batch_explains_every_patient_in_one_call() -> None:
    n, patients = 4, 7
    function = mlp(n, seed=11)
    rng = np.random.default_rng(11)
    xs, ref = rng.normal(size=(patients, n)), rng.normal(size=n)
    scorer = CountingScorer(function)
    explanations = await explain_batch(xs, ref, scorer)
    assert len(scorer.calls) == 1
    assert scorer.calls[0].shape == (patients * mix_count(n), n)
    assert len(explanations) == patients
    for x, explanation in zip(xs, explanations, strict=True):
        assert explanation.x == tuple(float(v) for v in x.astype(np.float32))
        alone = await explain(x, ref, CountingScorer(function))
        assert explanation.contributions == pytest.approx(alone.contributions, rel=1e-12)
        assert_efficient(explanation)
    assert await explain_batch(np.empty((0, n)), ref, scorer) == []
    assert len(scorer.calls) == 1


def test_mixes_take_each_feature_from_x_by_bit() -> None:
    rows = mixes([1.0, 2.0, 3.0], [10.0, 20.0, 30.0])
    assert rows.dtype == np.float32
    assert rows.shape == (8, 3)
    assert rows[0].tolist() == [10.0, 20.0, 30.0]
    assert rows[0b101].tolist() == [1.0, 20.0, 3.0]
    assert rows[-1].tolist() == [1.0, 2.0, 3.0]


def test_shapley_values_of_two_features_by_hand() -> None:
    # v(0) = 0, v({0}) = 1, v({1}) = 2, v({0, 1}) = 6
    phi = shapley_values([0.0, 1.0, 2.0, 6.0])
    assert phi.tolist() == [(1 + (6 - 2)) / 2, (2 + (6 - 1)) / 2]
    with pytest.raises(ValueError, match="2\\*\\*n"):
        shapley_values([1.0, 2.0, 3.0])


async def test_more_than_the_cap_is_refused_with_advice_to_group() -> None:
    scorer = CountingScorer(lambda z: z.sum(axis=1))
    n = MAX_EXACT_FEATURES + 1
    with pytest.raises(ValueError, match="group features"):
        await explain(np.zeros(n), np.ones(n), scorer)
    with pytest.raises(ValueError, match="group features"):
        mix_count(n)
    assert scorer.calls == []


@pytest.mark.parametrize(
    ("x", "ref", "message"),
    [
        ([], [], "at least one feature"),
        ([1.0, 2.0], [1.0], "one value a feature"),
        ([[1.0, 2.0]], [1.0, 2.0], "one value a feature"),
        ([1.0, float("nan")], [1.0, 2.0], "finite"),
        ([1.0, 2.0], [1.0, float("inf")], "finite"),
        ([1.0, 1e39], [1.0, 2.0], "finite"),  # beyond float32
    ],
)
async def test_bad_inputs_are_refused_before_scoring(
    x: list[Any], ref: list[float], message: str
) -> None:
    scorer = CountingScorer(lambda z: z.sum(axis=1))
    with pytest.raises(ValueError, match=message):
        await explain(x, ref, scorer)
    assert scorer.calls == []


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda z: z.sum(axis=1)[:-1], "one score a row"),
        (lambda z: z, "one score a row"),
        (lambda z: np.full(len(z), np.nan), "not finite"),
    ],
)
async def test_a_score_function_answering_wrongly_is_an_error(
    answer: RowFunction, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await explain([1.0, 2.0], [0.0, 0.0], CountingScorer(answer))


async def test_contributions_add_up_in_the_space_the_scores_are_in() -> None:
    """Probability and log-odds are two spaces: both add up, only log-odds is coef*(x-ref)."""
    coef, intercept = np.array([0.8, -1.2, 0.5]), -0.3
    x, ref = np.array([2.0, 1.0, -1.0]), np.array([0.0, 0.0, 0.0])

    def log_odds(z: NDArray[np.float32]) -> NDArray[np.float64]:
        return np.asarray(z.astype(np.float64) @ coef + intercept)

    def probability(z: NDArray[np.float32]) -> NDArray[np.float64]:
        return 1.0 / (1.0 + np.exp(-log_odds(z)))

    in_log_odds = await explain(x, ref, CountingScorer(log_odds))
    in_probability = await explain(x, ref, CountingScorer(probability))
    assert_efficient(in_log_odds)
    assert_efficient(in_probability)
    linear = linear_contributions(coef, x, ref)
    assert in_log_odds.contributions == pytest.approx(list(linear), rel=1e-12)
    assert in_probability.contributions != pytest.approx(list(linear), rel=1e-3)
    assert in_probability.score == pytest.approx(float(probability(as_rows(x))[0]))


# scikit-learn is not a dependency of the inference service; the workspace has it for the
# models package, and these tests use it when it is there.
async def test_logistic_regression_log_odds_equal_coef_times_difference() -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    datasets = pytest.importorskip("sklearn.datasets")
    features, labels = datasets.make_classification(n_samples=300, n_features=6, random_state=0)
    model = linear_model.LogisticRegression(max_iter=1000).fit(features, labels)
    ref = features.mean(axis=0)

    async def decision(rows: NDArray[np.float32]) -> NDArray[Any]:
        return np.asarray(model.decision_function(rows.astype(np.float64)))

    async def probability(rows: NDArray[np.float32]) -> NDArray[Any]:
        return np.asarray(model.predict_proba(rows.astype(np.float64))[:, 1])

    for x in features[:5]:
        explanation = await explain(x, ref, decision)
        expected = linear_contributions(model.coef_[0], explanation.x, explanation.reference)
        assert explanation.contributions == pytest.approx(list(expected), rel=1e-9, abs=1e-12)
        assert_efficient(explanation)
        in_probability = await explain(x, ref, probability)
        assert_efficient(in_probability)
        assert in_probability.score == pytest.approx(
            float(model.predict_proba(as_rows(x).astype(np.float64))[0, 1]), abs=1e-15
        )


@pytest.mark.parametrize("kind", ["regressor", "classifier"])
async def test_gradient_boosted_trees_against_permutation_shapley(kind: str) -> None:
    ensemble = pytest.importorskip("sklearn.ensemble")
    datasets = pytest.importorskip("sklearn.datasets")
    features, targets = (
        datasets.make_friedman1(n_samples=300, n_features=5, random_state=1)
        if kind == "regressor"
        else datasets.make_classification(n_samples=300, n_features=5, random_state=1)
    )
    if kind == "regressor":
        model = ensemble.GradientBoostingRegressor(n_estimators=40, max_depth=3, random_state=1)
        model.fit(features, targets)

        def function(rows: NDArray[np.float32]) -> NDArray[Any]:
            return np.asarray(model.predict(rows))
    else:
        model = ensemble.GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=1)
        model.fit(features, targets)

        def function(rows: NDArray[np.float32]) -> NDArray[Any]:
            return np.asarray(model.predict_proba(rows)[:, 1])

    scorer: ScoreBatch = CountingScorer(function)
    ref = np.median(features, axis=0)
    explanations = await explain_batch(features[:4], ref, scorer)
    for x, explanation in zip(features[:4], explanations, strict=True):
        assert_efficient(explanation)
        expected = permutation_shapley(function, x, ref)
        assert explanation.contributions == pytest.approx(expected, rel=1e-9, abs=1e-12)
