"""Per-rollout scores (SPEC 3) as plain vectorised numpy functions, and a `Dataset.map` that adds them.

For one rollout with numeric MC scores s_1..s_n (steps whose score is missing or non-numeric are
skipped, exactly like the reference) and hard labels y_j = 1 iff s_j > 0:

    p_pos = (number of y_j = 1) / n
    R     = mean of s_j over the positive steps;  R = 1.0 when there is no positive step
    BIS   = (p_pos * (1 - p_pos) + alpha) * R

The sum inside R is taken the way Python's built-in `sum()` takes it (left to right on Python <= 3.11,
Neumaier-compensated from 3.12), so that these columns rank rollouts exactly as the reference does.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from mprm_hf.errors import MPRMError

SCORE_COLUMNS = ("n_steps", "n_pos", "p_pos", "reliability")


def p_pos(n_pos: np.ndarray, n_steps: np.ndarray) -> np.ndarray:
    """p_pos = n_pos / n (NaN where a rollout has no numeric score: it cannot be ranked)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(n_pos, dtype=np.float64) / np.asarray(n_steps, dtype=np.float64)


def reliability(sum_pos: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
    """R = sum_pos / n_pos, and R = 1.0 without a positive step (an all-negative rollout counts as a
    noise-free negative, the reference's rule)."""
    n_pos = np.asarray(n_pos)
    divisor = np.where(n_pos > 0, n_pos, 1).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(n_pos > 0, np.asarray(sum_pos, dtype=np.float64) / divisor, 1.0)


def bis(p_pos: np.ndarray, reliability: np.ndarray, alpha: float) -> np.ndarray:
    """BIS = (p_pos * (1 - p_pos) + alpha) * R: mixed rollouts first (p_pos near 0.5), weighted by how
    much their positive steps can be trusted; alpha keeps pure rollouts in play."""
    p_pos = np.asarray(p_pos, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return (p_pos * (1.0 - p_pos) + float(alpha)) * np.asarray(reliability, dtype=np.float64)


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
    """n_steps, n_pos, sum_pos per rollout from a flattened list column (Arrow offsets + values).

    `valid` marks numeric scores; the others are skipped, as the reference skips them."""
    lengths = np.diff(offsets).astype(np.int64)
    rows = len(lengths)
    row_of = np.repeat(np.arange(rows), lengths)
    position = np.arange(len(values)) - np.repeat(offsets[:-1], lengths)
    positive = valid & (values > 0.0)
    n_steps = np.bincount(row_of[valid], minlength=rows).astype(np.int64)
    n_pos = np.bincount(row_of[positive], minlength=rows).astype(np.int64)
    width = int(lengths.max()) if rows and len(values) else 0
    matrix = np.zeros((rows, width), dtype=np.float64)
    mask = np.zeros((rows, width), dtype=bool)
    matrix[row_of, position] = np.where(positive, values, 0.0)
    mask[row_of, position] = positive
    return {"n_steps": n_steps, "n_pos": n_pos, "sum_pos": python_sum_rows(matrix, mask)}


def _scores_batch(mc_scores: pa.ChunkedArray | pa.Array, alpha: float | None) -> dict[str, np.ndarray]:
    column = mc_scores.combine_chunks() if isinstance(mc_scores, pa.ChunkedArray) else mc_scores
    if isinstance(column, pa.ChunkedArray):  # an empty chunked array combines to itself
        column = pa.array([], type=pa.list_(pa.float64()))
    column = column.cast(pa.list_(pa.float64())) if column.type != pa.list_(pa.float64()) else column
    offsets = column.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    flat = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    offsets = offsets - offsets[0]
    valid = flat.is_valid().to_numpy(zero_copy_only=False)
    values = flat.fill_null(np.nan).to_numpy(zero_copy_only=False)
    stats = rollout_statistics(offsets, values, valid)
    columns = {
        "n_steps": stats["n_steps"],
        "n_pos": stats["n_pos"],
        "p_pos": p_pos(stats["n_pos"], stats["n_steps"]),
        "reliability": reliability(stats["sum_pos"], stats["n_pos"]),
    }
    if alpha is not None:
        columns["bis"] = bis(columns["p_pos"], columns["reliability"], alpha)
    return columns


def add_rollout_scores(ds, *, alpha: float | None = None, num_proc: int | None = None):
    """Add n_steps, n_pos, p_pos, reliability (and bis for `alpha`) to a VisualPRM400K `Dataset`.

    A batched `Dataset.map` over the `mc_scores` column in Arrow format, so it is cached by `datasets`
    and a second call with the same data is free. A rollout without a numeric score gets n_steps 0 and
    p_pos NaN: selectors never keep it (the reference does not rank it)."""
    if "mc_scores" not in ds.column_names:
        raise MPRMError(f"dataset has no 'mc_scores' column (columns: {', '.join(ds.column_names)})")
    existing = [name for name in (*SCORE_COLUMNS, "bis") if name in ds.column_names]
    if existing:
        ds = ds.remove_columns(existing)
    import datasets

    # Arrow-formatted map keeps only what the function returns: score one column, then join.
    scores = (
        ds.select_columns(["mc_scores"])
        .with_format("arrow")
        .map(
            _scores_batch,
            input_columns=["mc_scores"],
            batched=True,
            batch_size=10_000,
            fn_kwargs={"alpha": alpha},
            num_proc=num_proc if num_proc and num_proc > 1 and len(ds) > 20_000 else None,
            desc="Scoring rollouts",
        )
        .with_format(None)
    )
    return datasets.concatenate_datasets([ds, scores], axis=1)
