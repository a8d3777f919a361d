"""Exact per-feature contributions: baseline Shapley values, computed through the model itself.

For a score function ``f``, an input ``x`` and a stated reference ``r`` (both of ``n``
features), let ``v(S)`` be ``f`` of the mix that takes the features in ``S`` from ``x`` and the
others from ``r``. Feature ``i``'s contribution is its baseline (interventional) Shapley value

    phi_i = sum over S not holding i of |S|! (n - |S| - 1)! / n! * (v(S + {i}) - v(S))

and these add up exactly: ``base_score + sum(phi) = score``, where ``base_score = f(r)`` and
``score = f(x)`` (efficiency; to float rounding, about 1e-15 of the scores' size here, plus
whatever the model's own arithmetic does). A feature whose value equals the reference, or that
the model ignores, gets exactly 0; two features the model treats alike, with equal values,
get equal contributions. No model internals and no sampling: all ``2**n`` mixes are scored
in ONE call of the caller's ``score_batch`` (for a batch of patients, one call for all their
mixes), so the service can send them to Triton as one request, and ``score`` and
``base_score`` come from that same call.

The space: contributions add up in whatever space ``score_batch`` returns, and the module
does not know which. For a classifier the service chooses and must say which: probabilities
(``base_score + sum = P(x)``), or log-odds (pass ``logit(P)``; ``base_score + sum =
logit P(x)``). Shapley values do not commute with a non-linear map: the log-odds
contributions are not the logit of the probability ones. For a linear or logistic model in
log-odds they are exactly ``coef * (x - r)`` (:func:`linear_contributions`), which tests use
as an independent check.

Inputs are scored as float32 (what the ONNX models take): :class:`Explanation` holds ``x``
and the reference as scored. Cost: ``2**n`` rows a patient, so ``n`` is capped at
:data:`MAX_EXACT_FEATURES` (32,768 rows); a model with more features must be explained by
groups of features (a group's members move from the reference to ``x`` together).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

MAX_EXACT_FEATURES: Final = 15

ScoreBatch = Callable[[NDArray[np.float32]], Awaitable[NDArray[Any]]]
"""Scores rows ``[m, n]`` (float32) as ``[m]`` numbers (``[m, 1]`` is accepted too), in the
space the contributions are to add up in."""


@dataclass(frozen=True)
class Explanation:
    """``score = f(x)``, ``base_score = f(reference)`` and one contribution per feature, in
    the features' order, with ``base_score + sum(contributions) == score`` to float rounding.
    ``x`` and ``reference`` are the values scored (float32, as floats)."""

    x: tuple[float, ...]
    reference: tuple[float, ...]
    score: float
    base_score: float
    contributions: tuple[float, ...]

    @property
    def residual(self) -> float:
        """``score - base_score - sum(contributions)``: zero but for float rounding."""
        return math.fsum((self.score, -self.base_score, *(-c for c in self.contributions)))


def mix_count(n_features: int) -> int:
    """Rows scored to explain one input of ``n_features``: ``2**n``."""
    _check_feature_count(n_features)
    return 1 << n_features


def mixes(x: ArrayLike, reference: ArrayLike) -> NDArray[np.float32]:
    """The ``2**n`` mixes of ``x`` and ``reference`` (float32, ``[2**n, n]``): row ``s``
    takes feature ``i`` from ``x`` when bit ``i`` of ``s`` is set, else from the reference.
    Row 0 is the reference, the last row is ``x``."""
    inputs, base = _inputs(x, reference)
    return _mixes_of(inputs[np.newaxis], base).reshape(-1, base.shape[0])


def shapley_values(values: ArrayLike) -> NDArray[np.float64]:
    """The baseline Shapley values ``[..., n]`` from the scores ``[..., 2**n]`` of the mixes
    (in :func:`mixes`' order). Vectorised over subsets: for each feature, the ``2**(n-1)``
    gains of adding it to a subset, weighted in one dot product."""
    scores = np.asarray(values, dtype=np.float64)
    count = scores.shape[-1] if scores.ndim else 0
    n = count.bit_length() - 1
    if count < 2 or count != 1 << n:
        raise ValueError("the scores of the mixes number 2**n, n >= 1")
    lead = scores.shape[:-1]
    contributions = np.empty((*lead, n), dtype=np.float64)
    for feature, weights in enumerate(_subset_weights(n)):
        # Subsets s and s + 2**feature, side by side: axis -2 is bit `feature` of the subset.
        pairs = scores.reshape(*lead, count >> (feature + 1), 2, 1 << feature)
        gains = (pairs[..., 1, :] - pairs[..., 0, :]).reshape(*lead, count >> 1)
        contributions[..., feature] = gains @ weights
    return contributions


@functools.lru_cache(maxsize=MAX_EXACT_FEATURES)
def _subset_weights(n: int) -> tuple[NDArray[np.float64], ...]:
    """For each feature, the Shapley weight of each subset without it, in the order
    :func:`shapley_values` lays out its gains: |S|! (n - |S| - 1)! / n!, which is
    1 / (n * C(n - 1, |S|))."""
    _check_feature_count(n)
    weight_of_size = np.array([1.0 / (n * math.comb(n - 1, s)) for s in range(n)])
    subsets = np.arange(1 << n)
    sizes = np.zeros_like(subsets)
    for bit in range(n):
        sizes += (subsets >> bit) & 1
    weights = []
    for feature in range(n):
        without = sizes.reshape(-1, 2, 1 << feature)[:, 0, :].ravel()
        weights.append(weight_of_size[without])
        weights[-1].flags.writeable = False
    return tuple(weights)


async def explain(x: ArrayLike, reference: ArrayLike, score_batch: ScoreBatch) -> Explanation:
    """``x`` scored and explained against ``reference`` with one call of ``score_batch``."""
    inputs, _ = _inputs(x, reference)
    (explanation,) = await explain_batch(inputs[np.newaxis, :], reference, score_batch)
    return explanation


async def explain_batch(
    xs: ArrayLike, reference: ArrayLike, score_batch: ScoreBatch
) -> list[Explanation]:
    """Each row of ``xs`` (``[p, n]``) scored and explained against ``reference``, with one
    call of ``score_batch`` for all ``p * 2**n`` mixes (callers bound ``p`` to bound memory:
    about ``p * 2**n * (4n + 8)`` bytes of rows and scores)."""
    inputs, base = _inputs(xs, reference, batch=True)
    n = base.shape[0]
    if inputs.shape[0] == 0:
        return []
    rows = _mixes_of(inputs, base).reshape(-1, n)
    scores = _scores(await score_batch(rows), rows.shape[0]).reshape(inputs.shape[0], 1 << n)
    contributions = shapley_values(scores)
    reference_scored = tuple(float(v) for v in base)
    return [
        Explanation(
            x=tuple(float(v) for v in inputs[patient]),
            reference=reference_scored,
            score=float(scores[patient, -1]),
            base_score=float(scores[patient, 0]),
            contributions=tuple(float(c) for c in contributions[patient]),
        )
        for patient in range(inputs.shape[0])
    ]


def linear_contributions(
    coef: ArrayLike, x: ArrayLike, reference: ArrayLike
) -> NDArray[np.float64]:
    """``coef * (x - reference)``: the exact contributions of a linear model's output (for a
    logistic model, in log-odds), in float64."""
    weights = np.asarray(coef, dtype=np.float64).ravel()
    inputs = np.asarray(x, dtype=np.float64).ravel()
    base = np.asarray(reference, dtype=np.float64).ravel()
    if not weights.shape == inputs.shape == base.shape:
        raise ValueError("coef, x and reference have one value a feature")
    return weights * (inputs - base)


def _check_feature_count(n: int) -> None:
    if n < 1:
        raise ValueError("an explanation needs at least one feature")
    if n > MAX_EXACT_FEATURES:
        raise ValueError(
            f"exact contributions score all 2**n mixes of the features; {n} features is more "
            f"than {MAX_EXACT_FEATURES}: group features (each group moves from the reference "
            "to the input together) or explain fewer"
        )


def _inputs(
    x: ArrayLike, reference: ArrayLike, *, batch: bool = False
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused below
        base = np.asarray(reference, dtype=np.float32)
        inputs = np.asarray(x, dtype=np.float32)
    if base.ndim != 1:
        raise ValueError("the reference is one value a feature ([n])")
    _check_feature_count(base.shape[0])
    shape_ok = inputs.ndim == 2 if batch else inputs.ndim == 1
    if not shape_ok or inputs.shape[-1] != base.shape[0]:
        raise ValueError(
            "the inputs are [p, n] and the reference [n]"
            if batch
            else "the input and the reference are one value a feature ([n])"
        )
    if not (np.isfinite(inputs).all() and np.isfinite(base).all()):
        raise ValueError("the input and the reference are finite float32 numbers")
    return inputs, base


def _mixes_of(inputs: NDArray[np.float32], base: NDArray[np.float32]) -> NDArray[np.float32]:
    """``[p, 2**n, n]``: for each input, its mixes with ``base`` (values copied, never
    computed, so each is exactly the input's or the reference's)."""
    n = base.shape[0]
    takes_input = ((np.arange(1 << n)[:, np.newaxis] >> np.arange(n)) & 1).astype(bool)
    rows = np.empty((inputs.shape[0], 1 << n, n), dtype=np.float32)
    rows[...] = base
    np.copyto(rows, inputs[:, np.newaxis, :], where=takes_input[np.newaxis])
    return rows


def _scores(answer: object, expected: int) -> NDArray[np.float64]:
    scores = np.asarray(answer, dtype=np.float64)
    if scores.shape == (expected, 1):
        scores = scores[:, 0]
    if scores.shape != (expected,):
        raise ValueError("the score function returns one score a row ([m] or [m, 1])")
    if not np.isfinite(scores).all():
        raise ValueError("the score function returned a score that is not finite")
    return scores
