"""Selectors: which rollouts to train on, each at the same budget (SPEC 3 and its baselines).

A selector gives every rollout a *priority* (higher is kept first) and may declare some rollouts
ineligible; the budget is then applied the same way for all of them:

* per source (`top_ratio=r`): inside each source, `top_k = max(1, floor(m * r))` of its m eligible
  rollouts, by priority, ties in dataset order (a stable sort, as the reference);
* global (`budget=N`): the N highest priorities over all sources.

Rollouts without a numeric MC score are never eligible (the reference cannot rank them). The kept
rows come back in dataset order, except `entropy` with `curriculum=True` (low to high entropy).

To add a selector: write a subclass of `Selector` with a `priority` method and register it with
`@register("name")`; the CLI and `select()` pick it up from `SELECTORS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mprm_hf.errors import MPRMError
from mprm_hf.selection import scores as scoring

SELECTORS: dict[str, type[Selector]] = {}


def register(name: str) -> Callable[[type[Selector]], type[Selector]]:
    def add(cls: type[Selector]) -> type[Selector]:
        cls.name = name
        SELECTORS[name] = cls
        return cls

    return add


@dataclass
class Selection:
    """The kept row indices (in output order), the scored dataset and what the selector computed."""

    indices: np.ndarray
    scored: Any  # datasets.Dataset with the score columns
    priority: np.ndarray
    eligible: np.ndarray
    params: dict[str, Any]
    order_note: str = "dataset order"


class Selector:
    """Base: subclasses set `params` (the CLI flags they use) and define `priority`."""

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}  # parameter -> default
    uses_budget: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise MPRMError(
                f"selector {self.name!r} takes no parameter {unknown[0]!r} (takes: {', '.join(self.params) or 'none'})"
            )
        self.values = {**self.params, **params}

    def eligible(self, table: dict[str, np.ndarray]) -> np.ndarray:
        return table["n_steps"] > 0

    def priority(self, ds: Any, table: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def output_order(self, kept: np.ndarray, priority: np.ndarray) -> tuple[np.ndarray, str]:
        return np.sort(kept), "dataset order"


def _random_priority(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n)


@register("bis")
class BisSelector(Selector):
    """Balanced-Information Score: BIS = (p_pos (1 - p_pos) + alpha) R."""

    params = {"alpha": 0.05}

    def priority(self, ds, table):
        alpha = float(self.values["alpha"])
        if not math.isfinite(alpha):
            raise MPRMError(f"--alpha must be a finite number, got {alpha!r}")
        return scoring.bis(table["p_pos"], table["reliability"], alpha)


@register("random")
class RandomSelector(Selector):
    """A seeded uniform sample: the paper's random baseline."""

    params = {"seed": 0}

    def priority(self, ds, table):
        return _random_priority(len(table["n_steps"]), int(self.values["seed"]))


@register("mixed")
class MixedSelector(Selector):
    """Only rollouts with both a positive and a negative step; a seeded sample when over budget."""

    params = {"seed": 0}

    def eligible(self, table):
        return (table["n_pos"] > 0) & (table["n_pos"] < table["n_steps"])

    def priority(self, ds, table):
        return _random_priority(len(table["n_steps"]), int(self.values["seed"]))


@register("reliable")
class ReliableSelector(Selector):
    """Highest R first (R = 1.0 for an all-negative rollout, as in BIS)."""

    def priority(self, ds, table):
        return table["reliability"]


@register("low-mc")
class LowMCSelector(Selector):
    """Lowest R first: the rollouts whose positive steps the MC estimate trusts least."""

    def priority(self, ds, table):
        return -table["reliability"]


@register("full")
class FullSelector(Selector):
    """Every rankable rollout; the budget does not apply."""

    uses_budget = False

    def priority(self, ds, table):
        return np.zeros(len(table["n_steps"]))


@register("entropy")
class EntropySelector(Selector):
    """EGT-style curation by a PRM's predictive entropy over each rollout's step judgements.

    entropy = mean over steps of the binary entropy (bits) of the model's positive-reward probability;
    the `drop` fraction of highest-entropy rollouts of each source is removed (likely label noise),
    a budget then keeps the lowest-entropy rest, and `curriculum=True` orders the output from low to
    high entropy. The entropies come from an `entropy` column if the dataset has one, else from a
    scoring pass of `model` (a path or Hub id, through `mprm_hf.scoring.score_traces`)."""

    params = {"model": None, "drop": 0.1, "curriculum": False, "step_format": "prm-token", "batch_size": 8}

    def eligible(self, table):
        base = table["n_steps"] > 0
        entropy = table["entropy"]
        drop = float(self.values["drop"])
        if not 0.0 <= drop < 1.0:
            raise MPRMError(f"--entropy-drop must be in [0, 1), got {drop!r}")
        keep = base & np.isfinite(entropy)
        for source in np.unique(table["source"]):
            members = np.flatnonzero(keep & (table["source"] == source))
            n_drop = math.floor(len(members) * drop)
            if n_drop:
                worst = members[np.argsort(-entropy[members], kind="stable")[:n_drop]]
                keep[worst] = False
        return keep

    def priority(self, ds, table):
        return -table["entropy"]

    def output_order(self, kept, priority):
        if self.values["curriculum"]:
            return kept[np.argsort(-priority[kept], kind="stable")], "entropy, low to high (curriculum)"
        return np.sort(kept), "dataset order"


def rollout_entropy(
    ds: Any, model: str | Path, *, step_format: str = "prm-token", batch_size: int = 8, progress: bool = True
) -> np.ndarray:
    """Mean step entropy of every rollout under `model` (one scoring pass over the whole dataset)."""
    from mprm_hf.data.stepwise import prompt_of
    from mprm_hf.modeling import load_model_and_processor
    from mprm_hf.scoring import score_traces

    model_obj, processor = load_model_and_processor(str(model))
    traces = []
    for record in ds:
        root = Path(record.get("image_root") or ".")
        traces.append(
            {
                "question": prompt_of(record),
                "steps": [text.strip() for text in record["steps"]],
                "images": [str(root / image) for image in record["image"]],
            }
        )
    probabilities = score_traces(
        model_obj, processor, traces, batch_size=batch_size, step_format=step_format, progress=progress
    )
    return scoring.mean_step_entropy(probabilities)


def _budgeted(
    priority: np.ndarray,
    eligible: np.ndarray,
    sources: np.ndarray,
    *,
    top_ratio: float | None,
    budget: int | None,
) -> np.ndarray:
    """Indices kept by the budget: per source (`top_ratio`) or global (`budget`), stable by priority."""
    candidates = np.flatnonzero(eligible)
    if budget is not None:
        order = candidates[np.argsort(-priority[candidates], kind="stable")]
        return order[:budget]
    kept = []
    for source in dict.fromkeys(sources[candidates].tolist()):  # sources in dataset order
        members = candidates[sources[candidates] == source]
        top_k = max(1, math.floor(len(members) * top_ratio))
        kept.append(members[np.argsort(-priority[members], kind="stable")[:top_k]])
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


def check_budget(top_ratio: float | None, budget: int | None) -> None:
    if top_ratio is not None and budget is not None:
        raise MPRMError("give either --top-ratio or --budget, not both")
    if top_ratio is not None and not (isinstance(top_ratio, (int, float)) and 0.0 < top_ratio <= 1.0):
        raise MPRMError(f"--top-ratio must be in (0, 1], got {top_ratio!r}")
    if budget is not None and (not isinstance(budget, int) or budget < 1):
        raise MPRMError(f"--budget must be a positive number of rollouts, got {budget!r}")


def select_rollouts(
    ds: Any,
    method: str,
    *,
    top_ratio: float | None = None,
    budget: int | None = None,
    num_proc: int | None = None,
    progress: bool = True,
    **params: Any,
) -> Selection:
    """Score `ds` (a VisualPRM400K dataset), run selector `method` at the budget, return the Selection."""
    if method not in SELECTORS:
        raise MPRMError(f"unknown selection method {method!r} (one of: {', '.join(SELECTORS)})")
    selector = SELECTORS[method](**params)
    if selector.uses_budget and top_ratio is None and budget is None:
        raise MPRMError(f"selector {method!r} needs a budget: --top-ratio R or --budget N")
    check_budget(top_ratio, budget)
    alpha = selector.values.get("alpha") if method == "bis" else None
    scored = scoring.add_rollout_scores(ds, alpha=alpha, num_proc=num_proc)
    columns = scored.with_format("numpy", columns=list(scoring.SCORE_COLUMNS))[:]
    table = {name: np.asarray(columns[name]) for name in scoring.SCORE_COLUMNS}
    table["source"] = np.asarray(
        scored["source"] if "source" in scored.column_names else [""] * len(scored), dtype=object
    )
    if method == "entropy":
        if "entropy" in scored.column_names:
            table["entropy"] = np.asarray(scored["entropy"], dtype=np.float64)
        else:
            if not selector.values["model"]:
                raise MPRMError(
                    "selector 'entropy' needs --entropy-model (a PRM path or Hub id) or an 'entropy' column"
                )
            entropy = rollout_entropy(
                scored,
                selector.values["model"],
                step_format=selector.values["step_format"],
                batch_size=int(selector.values["batch_size"]),
                progress=progress,
            )
            scored = scored.add_column("entropy", entropy.tolist())
            table["entropy"] = entropy
    eligible = selector.eligible(table)
    priority = np.asarray(selector.priority(scored, table), dtype=np.float64)
    if selector.uses_budget:
        kept = _budgeted(priority, eligible, table["source"], top_ratio=top_ratio, budget=budget)
    else:
        kept = np.flatnonzero(eligible)
    indices, order_note = selector.output_order(kept, priority)
    recorded = dict(selector.values)
    recorded.update({"top_ratio": top_ratio} if top_ratio is not None else {})
    recorded.update({"budget": budget} if budget is not None else {})
    return Selection(indices.astype(np.int64), scored, priority, eligible, recorded, order_note)


def select(ds: Any, method: str, **params: Any) -> Any:
    """The selected rollouts of `ds` as a `Dataset` (score columns added), e.g.
    `select(ds, "bis", alpha=0.2, top_ratio=0.1)` or `select(ds, "random", seed=1, budget=500)`."""
    selection = select_rollouts(ds, method, **params)
    return selection.scored.select(selection.indices)
