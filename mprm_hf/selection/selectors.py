"""Selectors: which rollouts to train on, each a small function of the score table at one budget rule
(docs/definitions.md#selection and its baselines).

A selector gives every rollout a *priority* (higher is kept first) and may declare some rollouts
ineligible; the budget is then applied the same way for all of them (`scores.top_k`,
`scores.top_positions`):

* per source (`top_ratio=r`): inside each source, `top_k = max(1, floor(m * r))` of its m eligible
  rollouts, by priority, ties in file order (a stable sort, as the reference);
* global (`budget=N`): the N highest priorities over all sources, ties in file order.

The table holds only rollouts the reference can rank (at least one numeric MC score). Kept rows come
back in file order, except `entropy` with `curriculum=True` (low to high entropy).

To add a selector: subclass `Selector`, declare `params`, implement `priority` (and `eligible` or
`output_order` if needed) and register it with `@register("name")`; the CLI and `select()` pick it up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mprm_hf.errors import MPRMError
from mprm_hf.selection import scores as scoring

SELECTORS: dict[str, type[Selector]] = {}
Columns = dict[str, np.ndarray]
"""The score table as numpy: source (an integer per file), n_scored, n_pos, sum_pos, and entropy when
the table has it."""


def register(name: str) -> Callable[[type[Selector]], type[Selector]]:
    def add(cls: type[Selector]) -> type[Selector]:
        cls.name = name
        SELECTORS[name] = cls
        return cls

    return add


@dataclass
class Selection:
    """The kept table rows (in output order) and what the selector computed."""

    rows: np.ndarray
    method: str
    params: dict[str, Any]
    priority: np.ndarray
    eligible: np.ndarray
    order_note: str = "file order"


class Selector:
    """Base: subclasses set `params` (parameter -> default) and define `priority`."""

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    uses_budget: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise MPRMError(
                f"selector {self.name!r} takes no parameter {unknown[0]!r} (takes: {', '.join(self.params) or 'none'})"
            )
        self.values = {**self.params, **{key: value for key, value in params.items() if value is not None}}

    def eligible(self, table: Columns) -> np.ndarray:
        return table["n_scored"] > 0

    def priority(self, table: Columns) -> np.ndarray:
        raise NotImplementedError

    def output_order(self, kept: np.ndarray, priority: np.ndarray) -> tuple[np.ndarray, str]:
        return np.sort(kept), "file order"


def _random_priority(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n)


@register("bis")
class BisSelector(Selector):
    """Balanced-Information Score: BIS = (p_pos (1 - p_pos) + alpha) R."""

    params = {"alpha": scoring.DEFAULT_ALPHA}

    def priority(self, table):
        return scoring.bis(table["n_scored"], table["n_pos"], table["sum_pos"], self.values["alpha"])


@register("random")
class RandomSelector(Selector):
    """A seeded uniform sample: the paper's random baseline."""

    params = {"seed": 0}

    def priority(self, table):
        return _random_priority(len(table["n_scored"]), int(self.values["seed"]))


@register("mixed")
class MixedSelector(Selector):
    """Only rollouts with both a positive and a negative step; a seeded sample when over budget."""

    params = {"seed": 0}

    def eligible(self, table):
        return (table["n_pos"] > 0) & (table["n_pos"] < table["n_scored"])

    def priority(self, table):
        return _random_priority(len(table["n_scored"]), int(self.values["seed"]))


@register("reliable")
class ReliableSelector(Selector):
    """Highest R first (R = 1.0 for an all-negative rollout, as in BIS)."""

    def priority(self, table):
        return scoring.reliability(table["sum_pos"], table["n_pos"])


@register("low-mc")
class LowMCSelector(Selector):
    """Lowest R first: the rollouts whose positive steps the MC estimate trusts least."""

    def priority(self, table):
        return -scoring.reliability(table["sum_pos"], table["n_pos"])


@register("full")
class FullSelector(Selector):
    """Every rankable rollout; the budget does not apply."""

    uses_budget = False

    def priority(self, table):
        return np.zeros(len(table["n_scored"]))


@register("entropy")
class EntropySelector(Selector):
    """EGT-style curation by a PRM's predictive entropy over each rollout's step judgements.

    entropy = mean over steps of the binary entropy (bits) of the model's positive-reward probability;
    the `drop` fraction of highest-entropy rollouts of each source is removed (likely label noise),
    a budget then keeps the lowest-entropy rest, and `curriculum=True` orders the output from low to
    high entropy. The entropies are the score table's `entropy` column, which the scan computes with
    `model` (a path or Hub id, through `mprm_hf.scoring.score_traces`), or a `Dataset`'s own column."""

    params = {"model": None, "drop": 0.1, "curriculum": False, "step_format": "prm-token", "batch_size": 8}

    def eligible(self, table):
        drop = float(self.values["drop"])
        if not 0.0 <= drop < 1.0:
            raise MPRMError(f"--entropy-drop must be in [0, 1), got {drop!r}")
        if "entropy" not in table:
            raise MPRMError(
                "selector 'entropy' needs --entropy-model (a PRM path or Hub id) or an 'entropy' column"
            )
        entropy = table["entropy"]
        keep = (table["n_scored"] > 0) & np.isfinite(entropy)
        for source in np.unique(table["source"]):
            members = np.flatnonzero(keep & (table["source"] == source))
            n_drop = math.floor(len(members) * drop)
            if n_drop:
                keep[members[scoring.rank_descending(entropy[members])[:n_drop]]] = False
        return keep

    def priority(self, table):
        return -table["entropy"]

    def output_order(self, kept, priority):
        if self.values["curriculum"]:
            return kept[scoring.rank_descending(priority[kept])], "entropy, low to high (curriculum)"
        return np.sort(kept), "file order"


def check_budget(top_ratio: float | None, budget: int | None) -> None:
    if top_ratio is not None and budget is not None:
        raise MPRMError("give either --top-ratio or --budget, not both")
    if top_ratio is not None and not (
        isinstance(top_ratio, (int, float)) and not isinstance(top_ratio, bool) and 0.0 < top_ratio <= 1.0
    ):
        raise MPRMError(f"--top-ratio must be in (0, 1], got {top_ratio!r}")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
        raise MPRMError(f"--budget must be a positive number of rollouts, got {budget!r}")


def budgeted(
    priority: np.ndarray,
    eligible: np.ndarray,
    source: np.ndarray,
    *,
    top_ratio: float | None,
    budget: int | None,
) -> np.ndarray:
    """Rows kept by the budget, in file order: per source (`top_ratio`) or global (`budget`)."""
    candidates = np.flatnonzero(eligible)
    if budget is not None:
        return np.sort(candidates[scoring.top_positions(priority[candidates], budget)])
    grouped = candidates[np.argsort(source[candidates], kind="stable")]  # by source, file order inside
    bounds = np.flatnonzero(np.diff(source[grouped])) + 1
    kept = [
        members[scoring.top_positions(priority[members], scoring.top_k(len(members), top_ratio))]
        for members in np.split(grouped, bounds)
        if len(members)
    ]
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


def columns_of(source: np.ndarray, n_scored: np.ndarray, n_pos: np.ndarray, sum_pos: np.ndarray) -> Columns:
    """The columns every selector reads: the table's four (p_pos and R are the selectors' to derive)."""
    return {"source": source, "n_scored": n_scored, "n_pos": n_pos, "sum_pos": sum_pos}


def selector_for(
    method: str, *, top_ratio: float | None = None, budget: int | None = None, **params: Any
) -> Selector:
    """The selector `method` with its parameters, once they and the budget are checked (before any work)."""
    if method not in SELECTORS:
        raise MPRMError(f"unknown selection method {method!r} (one of: {', '.join(SELECTORS)})")
    selector = SELECTORS[method](**params)
    if selector.uses_budget and top_ratio is None and budget is None:
        raise MPRMError(f"selector {method!r} needs a budget: --top-ratio R or --budget N")
    check_budget(top_ratio, budget)
    if method == "bis":
        selector.values["alpha"] = scoring.check_alpha(selector.values["alpha"])
    return selector


def select_rows(
    table: Columns, method: str, *, top_ratio: float | None = None, budget: int | None = None, **params: Any
) -> Selection:
    """Run selector `method` on the score table's columns at the budget: a function of the table alone."""
    selector = selector_for(method, top_ratio=top_ratio, budget=budget, **params)
    eligible = selector.eligible(table)
    priority = np.asarray(selector.priority(table), dtype=np.float64)
    if selector.uses_budget:
        kept = budgeted(priority, eligible, table["source"], top_ratio=top_ratio, budget=budget)
    else:
        kept = np.flatnonzero(eligible)
    rows, order_note = selector.output_order(kept, priority)
    recorded = dict(selector.values)
    recorded.update({"top_ratio": top_ratio} if top_ratio is not None else {})
    recorded.update({"budget": budget} if budget is not None else {})
    return Selection(rows.astype(np.int64), method, recorded, priority, eligible, order_note)


def dataset_columns(ds: Any) -> Columns:
    """The selector columns of a VisualPRM400K `Dataset` (`load_visualprm400k`), from its float64
    `mc_scores` read through Arrow (never numpy's float32), with the scan's sums."""
    import pyarrow as pa

    if "mc_scores" not in ds.column_names:
        raise MPRMError(f"dataset has no 'mc_scores' column (columns: {', '.join(ds.column_names)})")
    column = ds.data.table.column("mc_scores").combine_chunks()
    if isinstance(column, pa.ChunkedArray):  # an empty column combines to itself
        column = pa.array([], type=pa.list_(pa.float64()))
    column = column.cast(pa.list_(pa.float64()))
    offsets = column.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    flat = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    offsets = offsets - offsets[0]
    valid = flat.is_valid().to_numpy(zero_copy_only=False)
    stats = scoring.rollout_statistics(offsets, flat.fill_null(np.nan).to_numpy(zero_copy_only=False), valid)
    names = ds["source"] if "source" in ds.column_names else [""] * len(ds)
    _, source = np.unique(np.asarray(names, dtype=object), return_inverse=True)
    return columns_of(source, stats["n_scored"], stats["n_pos"], stats["sum_pos"])


def select(ds: Any, method: str, **params: Any) -> Any:
    """The selected rollouts of a VisualPRM400K `Dataset`, e.g. `select(ds, "bis", alpha=0.2,
    top_ratio=0.1)` or `select(ds, "random", seed=1, budget=500)`: the same selectors and budget rule as
    `mprm-hf select`, on the dataset's rows. An `entropy` column serves the entropy selector."""
    columns = dataset_columns(ds)
    if "entropy" in ds.column_names:
        columns["entropy"] = np.asarray(ds["entropy"], dtype=np.float64)
    return ds.select(select_rows(columns, method, **params).rows)
