"""VisualProcessBench step-level F1, scored the way the VisualPRM paper reports it.

This file is a self-contained `evaluate` module (it imports only numpy, datasets and evaluate) so
that the same code runs from the installed `mprm_hf` package, from a local folder and from the Hub.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np

_CITATION = """\
@article{wang2025visualprm,
  title   = {VisualPRM: An Effective Process Reward Model for Multimodal Reasoning},
  author  = {Wang, Weiyun and others},
  journal = {arXiv preprint arXiv:2503.10291},
  year    = {2025}
}
@article{li2026bis,
  title   = {Training Data Efficiency in Multimodal Process Reward Models},
  author  = {Li, Jinyuan and others},
  journal = {arXiv preprint arXiv:2602.04145},
  year    = {2026}
}
"""

_DESCRIPTION = """\
Step-level evaluation of a process reward model on VisualProcessBench. Every step of a reasoning
trace carries a human label: 1 (correct), -1 (incorrect) or 0 (neutral). Neutral steps are left out.
A step is predicted correct iff its reward is >= the threshold. For each data source the module
computes F1 with "correct" as the positive class (F1_pos), F1 with "incorrect" as the positive class
(F1_neg), and their mean (macro-F1); F1 = 2TP / (2TP + FP + FN), and 0 when that denominator is 0.
`overall` is the average of the per-source macro-F1 weighted by each source's number of non-neutral
steps (the paper's "micro average over sources"). Pooled macro-F1, F1_pos, F1_neg and ROC-AUC over
all non-neutral steps are reported as well.

The threshold is 0.5 unless given. Some published evaluators pick the threshold that maximises the
score on the test set itself; that oracle figure is reported here only as `oracle_threshold` /
`oracle_overall`, never as `overall`. To choose a threshold honestly, call
`choose_threshold(...)` on a separate calibration split and pass the result as `threshold=`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): the reward of every step of every trace.
    references (`list` of `list` of `int`): the label of every step, 1 (correct), 0 (neutral) or
        -1 (incorrect); each list as long as the matching list of rewards.
    data_sources (`list` of `str`): the benchmark source of every trace (e.g. "MathVision_MINI").
    threshold (`float`, defaults to 0.5): a step is predicted correct iff its reward >= threshold.

Returns:
    overall (`float`): per-source macro-F1 averaged with weights = non-neutral steps per source.
    macro_f1_pooled (`float`): (f1_positive + f1_negative) / 2 over all non-neutral steps.
    f1_positive (`float`): pooled F1 of the class "correct".
    f1_negative (`float`): pooled F1 of the class "incorrect".
    auc (`float` or `None`): ROC-AUC of the rewards for "correct" (None when one class is absent).
    threshold (`float`): the threshold used.
    oracle_threshold (`float`), oracle_overall (`float`): the threshold that maximises `overall` on
        these very data, and that maximum (an upper bound, not a result).
    n_traces, n_steps, n_positive, n_negative, n_neutral (`int`): counts (n_steps = non-neutral).
    per_source (`dict`): for each source, macro_f1, f1_positive, f1_negative, auc and the counts.

Examples:
    >>> import evaluate
    >>> metric = evaluate.load("mprm_hf/metrics/visualprocessbench")  # or the Hub id
    >>> results = metric.compute(
    ...     predictions=[[0.9, 0.2, 0.7], [0.8, 0.6]],
    ...     references=[[1, -1, 0], [1, -1]],
    ...     data_sources=["WeMath", "DynaMath"],
    ...     threshold=0.5,
    ... )
    >>> round(results["overall"], 4), results["n_steps"]
    (0.6667, 4)
    >>> threshold = metric.choose_threshold(  # on a calibration split, not on the test set
    ...     predictions=[[0.9, 0.3], [0.4]], references=[[1, -1], [1]], data_sources=["WeMath", "WeMath"]
    ... )
    >>> threshold
    0.4
"""

LABELS = (1, 0, -1)


class _Steps:
    """The non-neutral steps of a benchmark as flat arrays, validated once."""

    def __init__(
        self,
        predictions: Sequence[Sequence[float]],
        references: Sequence[Sequence[int]],
        data_sources: Sequence[str],
    ) -> None:
        if not len(predictions) == len(references) == len(data_sources):
            raise ValueError(
                f"got {len(predictions)} predictions, {len(references)} references and "
                f"{len(data_sources)} data_sources; one of each is needed per trace"
            )
        scores: list[float] = []
        labels: list[int] = []
        trace_of_step: list[int] = []
        for trace, (trace_scores, trace_labels) in enumerate(zip(predictions, references, strict=True)):
            if len(trace_scores) != len(trace_labels):
                raise ValueError(
                    f"trace {trace}: {len(trace_scores)} scores but {len(trace_labels)} labels "
                    f"(scores and labels must have one entry per step)"
                )
            for step, (score, label) in enumerate(zip(trace_scores, trace_labels, strict=True)):
                if label not in LABELS:
                    raise ValueError(f"trace {trace}: label {label!r} of step {step} is not one of 1, 0, -1")
                if score is None or not np.isfinite(score):
                    raise ValueError(f"trace {trace}: score {score!r} of step {step} is not a finite number")
            scores.extend(trace_scores)
            labels.extend(trace_labels)
            trace_of_step.extend([trace] * len(trace_labels))

        label_array = np.asarray(labels, dtype=np.int64)
        kept = label_array != 0
        self.n_traces = len(predictions)
        self.sources: list[str] = sorted(set(data_sources))
        source_index_of_trace = np.asarray([self.sources.index(s) for s in data_sources], dtype=np.int64)
        step_source = source_index_of_trace[np.asarray(trace_of_step, dtype=np.int64)]
        self.neutral_per_source = np.bincount(step_source[~kept], minlength=len(self.sources))
        self.traces_per_source = np.bincount(source_index_of_trace, minlength=len(self.sources))
        self.scores = np.asarray(scores, dtype=np.float64)[kept]
        self.is_positive = label_array[kept] == 1
        self.source = step_source[kept]
        if self.scores.size == 0:
            raise ValueError("no non-neutral step to score: every label is 0")
        self.positives = np.bincount(self.source, weights=self.is_positive, minlength=len(self.sources))
        self.negatives = np.bincount(self.source, weights=~self.is_positive, minlength=len(self.sources))

    def sweep(self) -> tuple[np.ndarray, np.ndarray]:
        """Overall at every threshold that changes a prediction: each distinct score, and one above the
        largest (everything predicted incorrect). Exact: one sort, then cumulative counts per source."""
        order = np.argsort(self.scores, kind="stable")
        sorted_scores = self.scores[order]
        distinct, first_index = np.unique(sorted_scores, return_index=True)
        # At candidate k, exactly the first `cut[k]` sorted steps score below the threshold.
        cut = np.append(first_index, sorted_scores.size)
        thresholds = np.append(distinct, np.nextafter(distinct[-1], np.inf))
        sorted_source = self.source[order]
        sorted_positive = self.is_positive[order]
        positives_below = np.empty((len(self.sources), cut.size))
        negatives_below = np.empty((len(self.sources), cut.size))
        for index in range(len(self.sources)):
            in_source = sorted_source == index
            positives_below[index] = np.append(0, np.cumsum(in_source & sorted_positive))[cut]
            negatives_below[index] = np.append(0, np.cumsum(in_source & ~sorted_positive))[cut]
        return thresholds, self._overall(positives_below, negatives_below)

    def below(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Per source, the positive and negative steps predicted incorrect (score < threshold), as [sources, 1]."""
        predicted_incorrect = self.scores < threshold
        positives = np.bincount(
            self.source, weights=predicted_incorrect & self.is_positive, minlength=len(self.sources)
        )
        negatives = np.bincount(
            self.source, weights=predicted_incorrect & ~self.is_positive, minlength=len(self.sources)
        )
        return positives[:, None], negatives[:, None]

    def per_source_f1(
        self, positives_below: np.ndarray, negatives_below: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """F1_pos and F1_neg of every source (rows) at every threshold (columns)."""
        positives = self.positives[:, None]
        negatives = self.negatives[:, None]
        f1_positive = _f1(
            true_pos=positives - positives_below,
            false_pos=negatives - negatives_below,
            false_neg=positives_below,
        )
        f1_negative = _f1(
            true_pos=negatives_below, false_pos=positives_below, false_neg=negatives - negatives_below
        )
        return f1_positive, f1_negative

    def _overall(self, positives_below: np.ndarray, negatives_below: np.ndarray) -> np.ndarray:
        f1_positive, f1_negative = self.per_source_f1(positives_below, negatives_below)
        weights = (self.positives + self.negatives)[:, None]
        return ((f1_positive + f1_negative) / 2 * weights).sum(axis=0) / weights.sum()

    def results(self, threshold: float) -> dict:
        positives_below, negatives_below = self.below(threshold)
        f1_positive, f1_negative = self.per_source_f1(positives_below, negatives_below)
        pooled_positive, pooled_negative = (
            _f1(
                true_pos=self.positives.sum() - positives_below.sum(),
                false_pos=self.negatives.sum() - negatives_below.sum(),
                false_neg=positives_below.sum(),
            ),
            _f1(
                true_pos=negatives_below.sum(),
                false_pos=positives_below.sum(),
                false_neg=self.negatives.sum() - negatives_below.sum(),
            ),
        )
        thresholds, overall_curve = self.sweep()
        best = int(np.argmax(overall_curve))  # first maximum: the lowest threshold among ties
        per_source = {}
        for index, source in enumerate(self.sources):
            in_source = self.source == index
            per_source[source] = {
                "macro_f1": float((f1_positive[index, 0] + f1_negative[index, 0]) / 2),
                "f1_positive": float(f1_positive[index, 0]),
                "f1_negative": float(f1_negative[index, 0]),
                "auc": roc_auc(self.scores[in_source], self.is_positive[in_source]),
                "n_steps": int(in_source.sum()),
                "n_positive": int(self.positives[index]),
                "n_negative": int(self.negatives[index]),
                "n_neutral": int(self.neutral_per_source[index]),
                "n_traces": int(self.traces_per_source[index]),
            }
        return {
            "overall": float(self._overall(positives_below, negatives_below)[0]),
            "macro_f1_pooled": float((pooled_positive + pooled_negative) / 2),
            "f1_positive": float(pooled_positive),
            "f1_negative": float(pooled_negative),
            "auc": roc_auc(self.scores, self.is_positive),
            "threshold": float(threshold),
            "oracle_threshold": float(thresholds[best]),
            "oracle_overall": float(overall_curve[best]),
            "n_traces": self.n_traces,
            "n_steps": int(self.scores.size),
            "n_positive": int(self.positives.sum()),
            "n_negative": int(self.negatives.sum()),
            "n_neutral": int(self.neutral_per_source.sum()),
            "per_source": per_source,
        }


def _f1(true_pos, false_pos, false_neg):
    """F1 = 2TP / (2TP + FP + FN), defined as 0 when nothing is predicted or present."""
    denominator = 2 * np.asarray(true_pos, dtype=np.float64) + false_pos + false_neg
    return np.divide(2 * true_pos, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def roc_auc(scores: np.ndarray, is_positive: np.ndarray) -> float | None:
    """ROC-AUC as the Mann-Whitney statistic with average ranks for ties (equal to the trapezoidal ROC area)."""
    n_positive = int(is_positive.sum())
    n_negative = int(is_positive.size - n_positive)
    if n_positive == 0 or n_negative == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1
    average_rank = (first_rank + (counts - 1) / 2)[inverse]
    rank_sum = average_rank[is_positive].sum()
    return float((rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def _check_threshold(threshold: float) -> float:
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float, np.integer, np.floating))
        or not np.isfinite(threshold)
    ):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return float(threshold)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VisualProcessBench(evaluate.Metric):
    """Per-source and overall step F1 on VisualProcessBench (docs/definitions.md#metric: neutral steps out, score >= threshold)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    # float64 keeps every reward exact, so thresholds found by the sweep reproduce.
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                    "data_sources": datasets.Value("string"),
                }
            ),
            homepage="https://huggingface.co/datasets/OpenGVLab/VisualProcessBench",
            reference_urls=["https://arxiv.org/abs/2503.10291", "https://arxiv.org/abs/2602.04145"],
        )

    def _compute(self, predictions, references, data_sources, threshold: float = 0.5) -> dict:
        return _Steps(predictions, references, data_sources).results(_check_threshold(threshold))

    def choose_threshold(self, *, predictions, references, data_sources) -> float:
        """The threshold that maximises `overall` on these (calibration) traces; pass it to `compute`
        on the test split. Ties go to the lowest such threshold."""
        thresholds, overall = _Steps(predictions, references, data_sources).sweep()
        return float(thresholds[int(np.argmax(overall))])

    def threshold_curve(self, *, predictions, references, data_sources) -> dict[str, list[float]]:
        """`overall` at every threshold that changes a prediction (for plotting F1 against the threshold):
        the value holds from each threshold up to the next one."""
        thresholds, overall = _Steps(predictions, references, data_sources).sweep()
        return {"thresholds": thresholds.tolist(), "overall": overall.tolist()}
