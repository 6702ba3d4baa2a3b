"""Per-rollout scores and the budget rule (docs/definitions.md#selection): each defined once, in float64, and used by every
selector, every output format and the `Dataset` API.

For one rollout with numeric MC scores s_1..s_n (a missing or non-numeric score is skipped, as the
reference skips it) and hard labels y_j = 1 iff s_j > 0:

    p_pos = (number of y_j = 1) / n
    R     = mean of s_j over the positive steps;  R = 1.0 when there is no positive step
    BIS   = (p_pos * (1 - p_pos) + alpha) * R

in the reference's Python-float operation order, with the sum inside R taken as Python's built-in
`sum()` takes it (left to right on Python <= 3.11, Neumaier-compensated from 3.12), so that near-ties
rank exactly as the reference ranks them. The budget keeps `top_k = max(1, floor(m * r))` of a source's
m eligible rollouts by a stable descending sort (ties keep file order).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np

from mprm_hf.errors import MPRMError

DEFAULT_ALPHA = 0.05
"""The reference script's default alpha. The paper's settings: 0.2 for a 10% subset, 0.05 for 25%."""


def check_alpha(alpha: float) -> float:
    """BIS's smoothing term: a finite number >= 0 (alpha < 0 would rank pure rollouts below nothing)."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise MPRMError(f"--alpha must be a number, got {alpha!r}") from None
    if not math.isfinite(value) or value < 0.0:
        raise MPRMError(f"--alpha must be a finite number >= 0, got {alpha!r}")
    return value


def p_pos(n_pos: np.ndarray, n_scored: np.ndarray) -> np.ndarray:
    """p_pos = n_pos / n (NaN where a rollout has no numeric score: it cannot be ranked)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(n_pos, dtype=np.float64) / np.asarray(n_scored, dtype=np.float64)


def reliability(sum_pos: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
    """R = sum_pos / n_pos, and R = 1.0 without a positive step (an all-negative rollout counts as a
    noise-free negative, the reference's rule)."""
    n_pos = np.asarray(n_pos)
    divisor = np.where(n_pos > 0, n_pos, 1).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return np.where(n_pos > 0, np.asarray(sum_pos, dtype=np.float64) / divisor, 1.0)


def bis(n_scored: np.ndarray, n_pos: np.ndarray, sum_pos: np.ndarray, alpha: float) -> np.ndarray:
    """BIS exactly as the reference's Python floats give it: mixed rollouts first (p_pos near 0.5),
    weighted by how much their positive steps can be trusted; alpha keeps pure rollouts in play."""
    mixture = p_pos(n_pos, n_scored)
    with np.errstate(invalid="ignore", over="ignore"):
        mixture *= 1.0 - mixture  # p_pos * (1 - p_pos): the right side first, as in Python
        mixture += check_alpha(alpha)
        mixture *= reliability(sum_pos, n_pos)
    return mixture


def top_k(m: int, top_ratio: float) -> int:
    """The per-source budget, `max(1, int(m * r))`, in Python arithmetic on purpose (the reference's)."""
    return max(1, int(m * top_ratio))


def rank_descending(priority: np.ndarray) -> np.ndarray:
    """Positions by priority descending, ties in input order: what `list.sort(key=..., reverse=True)`
    gives (NaN compares false both ways, so only Python's own sort reproduces Python's order)."""
    if np.isnan(priority).any():
        values = priority.tolist()
        return np.asarray(sorted(range(len(values)), key=values.__getitem__, reverse=True), dtype=np.int64)
    return np.argsort(-priority, kind="stable")


def top_positions(priority: np.ndarray, k: int) -> np.ndarray:
    """The first `k` of `rank_descending(priority)`, in input order, without sorting everything: every
    value above the k-th largest, then the ties at it in input order (exactly the stable sort's prefix)."""
    if k >= len(priority):
        return np.arange(len(priority), dtype=np.int64)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if np.isnan(priority).any():
        return np.sort(rank_descending(priority)[:k])
    kth = np.partition(priority, len(priority) - k)[len(priority) - k]
    above = np.flatnonzero(priority > kth)
    ties = np.flatnonzero(priority == kth)[: k - len(above)]
    return np.sort(np.concatenate([above, ties]))


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """H(p) = -p log2 p - (1 - p) log2 (1 - p), in bits (0 at p in {0, 1}, 1 at p = 0.5)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -(p * np.log2(p)) - (1.0 - p) * np.log2(1.0 - p)
    return np.nan_to_num(terms, nan=0.0)


def mean_step_entropy(step_probabilities: Sequence[Sequence[float]]) -> np.ndarray:
    """Per trace: the mean binary entropy of its steps' reward probabilities (NaN for a trace with no
    scored step). A PRM that is unsure about a trace's steps marks it as noisy or hard (EGT)."""
    lengths = np.fromiter(
        (len(row) for row in step_probabilities), dtype=np.int64, count=len(step_probabilities)
    )
    flat = np.fromiter(
        (p for row in step_probabilities for p in row), dtype=np.float64, count=int(lengths.sum())
    )
    return _segment_mean(binary_entropy(flat), lengths)


def _segment_mean(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    sums = np.bincount(row_of, weights=values, minlength=len(lengths))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(lengths > 0, sums / np.maximum(lengths, 1), np.nan)


def python_sum_rows(matrix: np.ndarray, mask: np.ndarray, *, compensated: bool | None = None) -> np.ndarray:
    """Row sums of `matrix[mask]`, element for element what `sum(row_values)` returns in Python.

    Python <= 3.11 adds left to right; 3.12+ adds with Neumaier compensation (and adds the
    compensation at the end only when it is non-zero and finite). `compensated` defaults to this
    interpreter's behaviour."""
    if compensated is None:
        compensated = sys.version_info >= (3, 12)
    rows = matrix.shape[0]
    total = np.zeros(rows, dtype=np.float64)
    if not compensated:  # from 0.0, left to right: adding 0.0 where nothing is taken changes no sum
        with np.errstate(invalid="ignore", over="ignore"):
            for column in np.where(mask, matrix, 0.0).T:
                total += column
        return total
    started = np.zeros(rows, dtype=bool)  # sum() starts from the int 0: the first float is taken as is
    correction = np.zeros(rows, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        for column in range(matrix.shape[1]):
            value, take = matrix[:, column], mask[:, column]
            first = take & ~started
            later = take & started
            added = total + value
            big_total = np.abs(total) >= np.abs(value)
            step = np.where(big_total, (total - added) + value, (value - added) + total)
            correction = np.where(later, correction + step, correction)
            total = np.where(first, value, np.where(later, added, total))
            started |= take
        apply = (correction != 0) & np.isfinite(correction)
        return np.where(apply, total + correction, total)


def rollout_statistics(offsets: np.ndarray, values: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """n_scored, n_pos, sum_pos per rollout from a flattened list column (Arrow offsets + values).

    `valid` marks numeric scores; the others are skipped, as the reference skips them."""
    lengths = np.diff(offsets).astype(np.int64)
    rows = len(lengths)
    row_of = np.repeat(np.arange(rows), lengths)
    position = np.arange(len(values)) - np.repeat(offsets[:-1], lengths)
    positive = valid & (values > 0.0)
    n_scored = np.bincount(row_of[valid], minlength=rows).astype(np.int64)
    n_pos = np.bincount(row_of[positive], minlength=rows).astype(np.int64)
    width = int(lengths.max()) if rows and len(values) else 0
    matrix = np.zeros((rows, width), dtype=np.float64)
    mask = np.zeros((rows, width), dtype=bool)
    matrix[row_of, position] = np.where(positive, values, 0.0)
    mask[row_of, position] = positive
    return {"n_scored": n_scored, "n_pos": n_pos, "sum_pos": python_sum_rows(matrix, mask)}
