"""The VisualProcessBench metric against a plain per-step reading of docs/definitions.md#metric and against scikit-learn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from mprm_hf.metrics import load_visualprocessbench_metric, visualprocessbench_path

REAL_12 = Path("/work/shared/data/visualprocessbench_real_12.jsonl")
FIXTURE_REAL_12 = Path(__file__).parent / "fixtures" / "visualprocessbench_real_12" / "test.jsonl"


@pytest.fixture(scope="module")
def metric():
    return load_visualprocessbench_metric(keep_in_memory=True)


def _real_records() -> list[dict]:
    """The 12 real VisualProcessBench label vectors: (labels, source) per trace."""
    if FIXTURE_REAL_12.exists():
        rows = [json.loads(line) for line in FIXTURE_REAL_12.read_text().splitlines() if line.strip()]
        return [{"labels": r["response"]["process_correctness"], "source": r["data_source"]} for r in rows]
    if not REAL_12.exists():
        pytest.skip("the real VisualProcessBench records are not available")
    rows = [json.loads(line) for line in REAL_12.read_text().splitlines() if line.strip()]
    for row in rows:
        assert len(row["steps"]) == len(row["process_correctness"])
    return [{"labels": r["process_correctness"], "source": r["source"]} for r in rows]


def _synthetic_records(synthetic_dir: Path) -> list[dict]:
    lines = (synthetic_dir / "VisualProcessBench" / "test.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [{"labels": r["response"]["process_correctness"], "source": r["data_source"]} for r in rows]


def _with_scores(records: list[dict], seed: int, decimals: int | None = None) -> dict:
    """Seeded random rewards; rounding makes many exact ties, the hard case for a threshold sweep."""
    rng = np.random.default_rng(seed)
    predictions = []
    for record in records:
        scores = rng.random(len(record["labels"]))
        predictions.append((np.round(scores, decimals) if decimals is not None else scores).tolist())
    return {
        "predictions": predictions,
        "references": [r["labels"] for r in records],
        "data_sources": [r["source"] for r in records],
    }


def _spec_f1(true_pos: int, false_pos: int, false_neg: int) -> float:
    denominator = 2 * true_pos + false_pos + false_neg
    return 2 * true_pos / denominator if denominator else 0.0


def spec_metric(predictions, references, data_sources, threshold: float) -> dict:
    """docs/definitions.md#metric step by step: neutral out, correct iff score >= threshold, per-source macro-F1,
    overall weighted by non-neutral steps per source, pooled figures over all steps."""
    counts: dict[str, dict[str, int]] = {}
    for scores, labels, source in zip(predictions, references, data_sources, strict=True):
        assert len(scores) == len(labels)
        tally = counts.setdefault(source, {"tp": 0, "fp": 0, "fn": 0, "tn": 0})
        for score, label in zip(scores, labels, strict=True):
            if label == 0:
                continue
            predicted_correct = score >= threshold
            if label == 1:
                tally["tp" if predicted_correct else "fn"] += 1
            else:
                tally["fp" if predicted_correct else "tn"] += 1

    def figures(t: dict[str, int]) -> dict:
        f1_pos = _spec_f1(t["tp"], t["fp"], t["fn"])
        f1_neg = _spec_f1(t["tn"], t["fn"], t["fp"])
        n = sum(t.values())
        return {"f1_positive": f1_pos, "f1_negative": f1_neg, "macro_f1": (f1_pos + f1_neg) / 2, "n_steps": n}

    per_source = {source: figures(t) for source, t in counts.items() if sum(t.values())}
    total = sum(f["n_steps"] for f in per_source.values())
    pooled = figures({k: sum(t[k] for t in counts.values()) for k in ("tp", "fp", "fn", "tn")})
    return {
        "overall": sum(f["macro_f1"] * f["n_steps"] for f in per_source.values()) / total,
        "macro_f1_pooled": pooled["macro_f1"],
        "f1_positive": pooled["f1_positive"],
        "f1_negative": pooled["f1_negative"],
        "per_source": per_source,
    }


def _assert_matches_spec(result: dict, expected: dict) -> None:
    for key in ("overall", "macro_f1_pooled", "f1_positive", "f1_negative"):
        assert result[key] == pytest.approx(expected[key], abs=1e-12), key
    assert set(result["per_source"]) == set(expected["per_source"])
    for source, figures in expected["per_source"].items():
        for key, value in figures.items():
            assert result["per_source"][source][key] == pytest.approx(value, abs=1e-12), (source, key)


def _scored_values(inputs: dict) -> list[float]:
    """The distinct rewards of non-neutral steps: the only thresholds that can change a prediction."""
    pairs = zip(inputs["predictions"], inputs["references"], strict=True)
    return sorted(
        {s for scores, labels in pairs for s, label in zip(scores, labels, strict=True) if label != 0}
    )


def _spec_oracle(inputs: dict) -> tuple[float, float]:
    """Brute force: docs/definitions.md#metric at every distinct score and just above the largest; first maximum wins."""
    flat = _scored_values(inputs)
    candidates = [*flat, float(np.nextafter(flat[-1], np.inf))]
    overall = [spec_metric(**inputs, threshold=t)["overall"] for t in candidates]
    best = int(np.argmax(overall))
    return candidates[best], overall[best]


@pytest.mark.parametrize("threshold", [0.5, 0.25, 0.8])
@pytest.mark.parametrize("decimals", [None, 1])
def test_matches_spec_on_real_records(metric, threshold, decimals):
    inputs = _with_scores(_real_records(), seed=7, decimals=decimals)
    result = metric.compute(**inputs, threshold=threshold)
    _assert_matches_spec(result, spec_metric(**inputs, threshold=threshold))
    assert result["threshold"] == threshold
    labels = [label for trace in inputs["references"] for label in trace]
    assert result["n_neutral"] == labels.count(0)
    assert result["n_positive"] == labels.count(1)
    assert result["n_negative"] == labels.count(-1)
    assert result["n_steps"] == result["n_positive"] + result["n_negative"]
    assert result["n_traces"] == len(inputs["predictions"])


def test_matches_spec_on_synthetic_benchmark(metric, synthetic_dir):
    inputs = _with_scores(_synthetic_records(synthetic_dir), seed=3)
    assert len(set(inputs["data_sources"])) > 1
    result = metric.compute(**inputs)
    _assert_matches_spec(result, spec_metric(**inputs, threshold=0.5))
    oracle_threshold, oracle_overall = _spec_oracle(inputs)
    assert result["oracle_threshold"] == oracle_threshold
    assert result["oracle_overall"] == pytest.approx(oracle_overall, abs=1e-12)


def test_matches_sklearn(metric, synthetic_dir):
    inputs = _with_scores(_synthetic_records(synthetic_dir) + _real_records(), seed=11, decimals=2)
    result = metric.compute(**inputs, threshold=0.4)
    scores = np.concatenate([np.asarray(p) for p in inputs["predictions"]])
    labels = np.concatenate([np.asarray(r) for r in inputs["references"]])
    sources = np.repeat(inputs["data_sources"], [len(r) for r in inputs["references"]])
    kept = labels != 0
    predicted = np.where(scores >= 0.4, 1, -1)

    def check(figures: dict, mask: np.ndarray) -> None:
        y_true, y_pred = labels[mask], predicted[mask]
        f1_pos = f1_score(y_true, y_pred, pos_label=1, zero_division=0)
        f1_neg = f1_score(y_true, y_pred, pos_label=-1, zero_division=0)
        assert figures["f1_positive"] == pytest.approx(f1_pos, abs=1e-12)
        assert figures["f1_negative"] == pytest.approx(f1_neg, abs=1e-12)
        assert figures["auc"] == pytest.approx(roc_auc_score(y_true == 1, scores[mask]), abs=1e-12)

    check(result, kept)
    for source, figures in result["per_source"].items():
        if figures["n_positive"] and figures["n_negative"]:
            check(figures, kept & (sources == source))
        else:
            assert figures["auc"] is None


def test_oracle_is_reported_under_its_own_name_only(metric):
    inputs = _with_scores(_real_records(), seed=5, decimals=1)
    oracle_threshold, oracle_overall = _spec_oracle(inputs)
    result = metric.compute(**inputs)
    assert result["threshold"] == 0.5
    assert result["overall"] == pytest.approx(spec_metric(**inputs, threshold=0.5)["overall"], abs=1e-12)
    assert result["oracle_threshold"] == oracle_threshold
    assert result["oracle_overall"] == pytest.approx(oracle_overall, abs=1e-12)
    assert result["oracle_overall"] >= result["overall"]
    at_oracle = metric.compute(**inputs, threshold=result["oracle_threshold"])
    assert at_oracle["overall"] == result["oracle_overall"]


def test_threshold_curve_is_the_metric_at_every_threshold(metric):
    inputs = _with_scores(_real_records(), seed=2, decimals=2)
    curve = metric.threshold_curve(**inputs)
    distinct = _scored_values(inputs)
    assert curve["thresholds"][:-1] == distinct and curve["thresholds"][-1] > distinct[-1]
    for threshold, overall in zip(curve["thresholds"], curve["overall"], strict=True):
        assert overall == pytest.approx(spec_metric(**inputs, threshold=threshold)["overall"], abs=1e-12)


def test_threshold_chosen_on_a_calibration_split(metric, synthetic_dir):
    records = _synthetic_records(synthetic_dir)
    calibration = _with_scores(records[: len(records) // 2], seed=1, decimals=2)
    test = _with_scores(records[len(records) // 2 :], seed=2, decimals=2)
    chosen = metric.choose_threshold(**calibration)
    assert chosen == _spec_oracle(calibration)[0]
    result = metric.compute(**test, threshold=chosen)
    assert result["threshold"] == chosen
    _assert_matches_spec(result, spec_metric(**test, threshold=chosen))


def test_everything_one_class_and_ties(metric):
    result = metric.compute(
        predictions=[[0.5, 0.5, 0.5], [0.5]], references=[[1, 1, 0], [1]], data_sources=["A", "B"]
    )
    assert result["overall"] == pytest.approx(0.5)  # F1_pos 1, F1_neg 0 (no TP, FP, FN) in each source
    assert result["auc"] is None
    assert result["oracle_threshold"] == 0.5 and result["oracle_overall"] == pytest.approx(0.5)


def test_length_mismatch_is_a_one_line_error(metric):
    with pytest.raises(ValueError, match=r"^trace 1: 3 scores but 4 labels") as error:
        metric.compute(
            predictions=[[0.1, 0.9], [0.2, 0.3, 0.4]],
            references=[[1, -1], [1, 1, -1, 0]],
            data_sources=["A", "A"],
        )
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("predictions", "references", "threshold", "message"),
    [
        ([[0.1, float("nan")]], [[1, -1]], 0.5, r"trace 0: score nan of step 1 is not a finite number"),
        ([[0.1, 0.2]], [[1, 2]], 0.5, r"trace 0: label 2 of step 1 is not one of 1, 0, -1"),
        ([[0.1, 0.2]], [[0, 0]], 0.5, r"no non-neutral step"),
        ([[0.1, 0.2]], [[1, -1]], float("inf"), r"threshold must be a finite number"),
    ],
)
def test_bad_input_is_a_clear_error(metric, predictions, references, threshold, message):
    with pytest.raises(ValueError, match=message):
        metric.compute(
            predictions=predictions, references=references, data_sources=["A"], threshold=threshold
        )


def test_loads_offline_from_the_installed_package(tmp_path):
    """A fresh process with an empty cache and the Hub switched off loads the folder and the script."""
    folder = visualprocessbench_path()
    assert (folder / "visualprocessbench.py").is_file() and (folder / "README.md").is_file()
    code = (
        "import evaluate, sys\n"
        "for path in sys.argv[1:]:\n"
        "    m = evaluate.load(path)\n"
        "    r = m.compute(predictions=[[0.9, 0.2]], references=[[1, -1]], data_sources=['WeMath'])\n"
        "    print(m.name, r['overall'])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    completed = subprocess.run(
        [sys.executable, "-c", code, str(folder), str(folder / "visualprocessbench.py")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.split() == ["visual_process_bench", "1.0"] * 2
