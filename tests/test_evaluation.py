"""`mprm-hf evaluate` end to end on the tiny model and the synthetic benchmark: resume, saved scores,
threshold modes, model-index, errors, and a two-process accelerate run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mprm_hf.cli import main as cli_main
from mprm_hf.errors import MPRMError
from mprm_hf.evaluation import choose_threshold, metrics_from_scores, model_index, read_scores

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_12 = Path(__file__).resolve().parent / "fixtures" / "visualprocessbench_real_12"
DDP_CONFIG = REPO_ROOT / "recipes" / "accelerate_configs" / "ddp.yaml"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _evaluate(model: Path, benchmark: Path, out: Path, *extra: str) -> int:
    return cli_main(
        ["evaluate", "--model", str(model), "--benchmark", str(benchmark), "--out", str(out), *extra]
    )


@pytest.fixture(scope="module")
def benchmark(synthetic_dir: Path) -> Path:
    return synthetic_dir / "VisualProcessBench"


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny_model_dir, benchmark) -> dict:
    """Score 5 traces, then resume to 12: the first five must not be scored again."""
    out = tmp_path_factory.mktemp("evaluate") / "run"
    assert _evaluate(tiny_model_dir, benchmark, out, "--limit", "5", "--batch-size", "4") == 0
    first = (out / "scores.jsonl").read_text()
    first_metrics = json.loads((out / "metrics.json").read_text())
    assert _evaluate(tiny_model_dir, benchmark, out, "--limit", "12", "--batch-size", "4") == 0
    return {"out": out, "first": first, "first_metrics": first_metrics}


def test_run_writes_scores_metrics_and_plot(resumed_run, benchmark):
    out = resumed_run["out"]
    metrics = json.loads((out / "metrics.json").read_text())
    records = _lines(out / "scores.jsonl")
    assert metrics["n_traces"] == 12 == len(records)
    assert metrics["threshold"] == 0.5 and metrics["threshold_source"] == "default"
    assert {"oracle_threshold", "oracle_overall", "per_source", "auc", "macro_f1_pooled"} <= set(metrics)
    assert (out / "threshold_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Labels saved with the scores are the benchmark's own, in full.
    bench = {}
    for line_number, line in enumerate((benchmark / "test.jsonl").read_text().splitlines(), start=1):
        row = json.loads(line)
        bench[str(row.get("id", f"test.jsonl:{line_number}"))] = row
    for record in records:
        source = bench[record["id"]]
        assert record["labels"] == source["response"]["process_correctness"]
        assert record["data_source"] == source["data_source"]
        assert len(record["scores"]) == len(record["labels"])
        assert all(0.0 < s < 1.0 for s in record["scores"])


def test_resume_scores_each_trace_once(resumed_run):
    out = resumed_run["out"]
    text = (out / "scores.jsonl").read_text()
    assert text.startswith(resumed_run["first"])  # the first run's lines are kept, not rewritten
    ids = [r["id"] for r in _lines(out / "scores.jsonl")]
    assert len(ids) == 12 == len(set(ids))
    assert resumed_run["first_metrics"]["n_traces"] == 5
    assert not list(out.glob("scores.rank*.jsonl"))


def test_metric_reproduces_from_saved_scores(resumed_run):
    out = resumed_run["out"]
    saved = json.loads((out / "metrics.json").read_text())
    run = saved.pop("run")
    assert run["limit"] == 12 and run["step_format"] == "prm-token"
    assert metrics_from_scores(out / "scores.jsonl") == saved


def test_runner_scores_equal_the_scoring_api(resumed_run, tiny_model_dir, benchmark):
    """The runner feeds the model exactly what `score_steps` does for the same record."""
    from mprm_hf.data.visualprocessbench import load_visualprocessbench
    from mprm_hf.modeling import load_model_and_processor
    from mprm_hf.scoring import score_steps

    dataset, _ = load_visualprocessbench(benchmark)
    saved = {r["id"]: r["scores"] for r in _lines(resumed_run["out"] / "scores.jsonl")}
    row = next(row for row in dataset if row["id"] in saved and row["images"])
    model, processor = load_model_and_processor(tiny_model_dir)
    direct = score_steps(model, processor, row["images"], row["question"], row["steps"])
    assert direct == pytest.approx(saved[row["id"]], abs=1e-5)


def test_fixed_threshold_and_calibration_file(resumed_run, tiny_model_dir, benchmark, tmp_path):
    """Everything is already scored in the copied folder, so these runs only recompute the metric."""
    calibration = resumed_run["out"] / "scores.jsonl"
    fixed = tmp_path / "fixed"
    shutil.copytree(resumed_run["out"], fixed)
    assert _evaluate(tiny_model_dir, benchmark, fixed, "--limit", "12", "--threshold", "0.47") == 0
    metrics = json.loads((fixed / "metrics.json").read_text())
    assert metrics["threshold"] == 0.47 and metrics["threshold_source"] == "fixed"
    metrics.pop("run")
    assert metrics == metrics_from_scores(fixed / "scores.jsonl", threshold=0.47)

    calibrated = tmp_path / "calibrated"
    shutil.copytree(resumed_run["out"], calibrated)
    first_five = calibrated / "calibration.jsonl"
    first_five.write_text("".join(line + "\n" for line in calibration.read_text().splitlines()[:5]))
    assert (
        _evaluate(tiny_model_dir, benchmark, calibrated, "--limit", "12", "--calibration", str(first_five))
        == 0
    )
    metrics = json.loads((calibrated / "metrics.json").read_text())
    chosen = choose_threshold(first_five)
    assert metrics["threshold"] == chosen and metrics["threshold_source"] == "calibration"
    assert metrics["calibration_file"] == str(first_five)
    # The chosen threshold is the calibration split's own oracle, and applied as is to the test split.
    assert chosen == metrics_from_scores(first_five)["oracle_threshold"]
    metrics.pop("run")
    assert metrics == metrics_from_scores(calibrated / "scores.jsonl", calibration=first_five)


def test_real_records_end_to_end(tiny_model_dir, tmp_path):
    """The 12 real VisualProcessBench records (long real steps, no images) go through unchanged."""
    out = tmp_path / "real"
    assert _evaluate(tiny_model_dir, REAL_12, out, "--batch-size", "4") == 0
    real = [json.loads(line) for line in (REAL_12 / "test.jsonl").read_text().splitlines()]
    labels = [label for row in real for label in row["response"]["process_correctness"]]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_traces"] == 12 and metrics["n_neutral"] == labels.count(0)
    assert metrics["n_positive"] == labels.count(1) and metrics["n_negative"] == labels.count(-1)
    assert set(metrics["per_source"]) == {row["data_source"] for row in real}
    saved = sorted(_lines(out / "scores.jsonl"), key=lambda r: int(r["id"].split(":")[-1]))
    assert [r["labels"] for r in saved] == [row["response"]["process_correctness"] for row in real]
    metrics.pop("run")
    assert metrics == metrics_from_scores(out / "scores.jsonl")


def test_missing_image_stops_before_scoring(tiny_model_dir, benchmark, tmp_path, capsys):
    copy = tmp_path / "bench"
    shutil.copytree(benchmark, copy)
    first = json.loads((copy / "test.jsonl").read_text().splitlines()[0])
    (copy / first["image"][0]).unlink()
    assert _evaluate(tiny_model_dir, copy, tmp_path / "out", "--limit", "3") == 1
    error = capsys.readouterr().err.strip()
    assert "image file not found" in error and first["image"][0] in error and "\n" not in error
    assert not (tmp_path / "out" / "scores.jsonl").exists()


def test_threshold_and_calibration_exclude_each_other(tiny_model_dir, benchmark, tmp_path, capsys):
    assert (
        _evaluate(tiny_model_dir, benchmark, tmp_path, "--threshold", "0.5", "--calibration", "x.jsonl") == 1
    )
    assert "give either --threshold or --calibration, not both" in capsys.readouterr().err


def test_interrupted_write_is_scored_again(resumed_run, tiny_model_dir, benchmark, tmp_path, capsys):
    out = tmp_path / "torn"
    shutil.copytree(resumed_run["out"], out)
    lines = (out / "scores.jsonl").read_text().splitlines()
    torn_id = json.loads(lines[-1])["id"]
    (out / "scores.jsonl").write_text("".join(line + "\n" for line in lines[:-1]) + lines[-1][:25])
    assert _evaluate(tiny_model_dir, benchmark, out, "--limit", "12") == 0
    assert "dropped a half-written last line" in capsys.readouterr().out
    records = _lines(out / "scores.jsonl")
    assert [r["id"] for r in records].count(torn_id) == 1 and len(records) == 12


def test_shards_of_an_interrupted_multi_process_run_are_merged(
    resumed_run, tiny_model_dir, benchmark, tmp_path
):
    """A killed two-process run left a shard (with a torn last line): its complete lines are kept as they
    are, the torn trace is scored again, and nothing is scored twice."""
    out = tmp_path / "shards"
    shutil.copytree(resumed_run["out"], out)
    lines = (out / "scores.jsonl").read_text().splitlines()
    kept, moved = lines[:7], lines[7:10]
    (out / "scores.jsonl").write_text("".join(line + "\n" for line in kept))
    (out / "scores.rank1.jsonl").write_text("".join(line + "\n" for line in moved) + lines[10][:30])
    assert _evaluate(tiny_model_dir, benchmark, out, "--limit", "12") == 0
    merged = (out / "scores.jsonl").read_text().splitlines()
    assert merged[:10] == kept + moved
    assert sorted(json.loads(line)["id"] for line in merged) == sorted(
        json.loads(line)["id"] for line in lines
    )
    assert not list(out.glob("scores.rank*.jsonl"))


def test_a_folder_holds_one_model_and_format(resumed_run, tiny_model_dir, benchmark, tmp_path, capsys):
    out = tmp_path / "other"
    shutil.copytree(resumed_run["out"], out)
    assert _evaluate(tiny_model_dir, benchmark, out, "--step-format", "visualprm") == 1
    error = capsys.readouterr().err.strip()
    assert "step_format='prm-token', not 'visualprm'" in error and "\n" not in error


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"id": "b", "data_source": "S", "scores": [0.1, 0.2], "labels": [1, -1, 0]}',
            "field 'scores' has 2 entries but 'labels' has 3",
        ),
        (
            '{"id": "b", "data_source": "S", "scores": [0.1, "x"], "labels": [1, -1]}',
            "field 'scores[1]' is not a finite number",
        ),
        (
            '{"id": "b", "data_source": "S", "scores": [0.1], "labels": [2]}',
            "field 'labels[0]' is not 1, 0 or -1",
        ),
        ('{"id": "a", "data_source": "S", "scores": [0.1], "labels": [1]}', "field 'id' repeats trace 'a'"),
        ('{"id": "b", "scores": [0.1], "labels": [1]}', "field 'data_source' is missing"),
        ("not json", "not a JSON line"),
    ],
)
def test_bad_scores_file_names_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "scores.jsonl"
    path.write_text('{"id": "a", "data_source": "S", "scores": [0.9], "labels": [1]}\n' + line + "\n")
    with pytest.raises(MPRMError, match=f"^{path}:2: .*") as error:
        read_scores(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_model_index(resumed_run):
    metrics = json.loads((resumed_run["out"] / "metrics.json").read_text())
    index = model_index(metrics, "tiny-prm", dataset_id="OpenGVLab/VisualProcessBench")
    assert len(index) == 1 and index[0]["name"] == "tiny-prm"
    results = index[0]["results"]
    assert all(r["dataset"]["type"] == "OpenGVLab/VisualProcessBench" for r in results)
    values = {m["name"]: m["value"] for r in results for m in r["metrics"]}
    assert values["Overall (micro average of per-source macro-F1)"] == metrics["overall"]
    assert all(m.get("args", {}).get("threshold", 0.5) == 0.5 for r in results for m in r["metrics"])


@pytest.mark.slow
def test_two_processes_under_accelerate_launch(resumed_run, tiny_model_dir, benchmark, tmp_path):
    """Two gloo processes on the CPU each score half of the traces; the main one gathers and reports."""
    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CONFIG),
        "--num_processes", "2", "--main_process_port", "0",
        "-m", "mprm_hf.cli", "evaluate", "--model", str(tiny_model_dir), "--benchmark", str(benchmark),
        "--out", str(out), "--limit", "12", "--batch-size", "4",
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "12 to score on 2 process(es)" in completed.stdout
    records = _lines(out / "scores.jsonl")
    assert sorted(r["id"] for r in records) == sorted(
        r["id"] for r in _lines(resumed_run["out"] / "scores.jsonl")
    )
    assert not list(out.glob("scores.rank*.jsonl"))
    single = {r["id"]: r["scores"] for r in _lines(resumed_run["out"] / "scores.jsonl")}
    for record in records:
        assert record["scores"] == pytest.approx(single[record["id"]], abs=1e-5)
    saved = json.loads((out / "metrics.json").read_text())
    saved.pop("run")
    assert saved == metrics_from_scores(out / "scores.jsonl")


def test_a_model_retrained_in_place_is_scored_again(benchmark, tmp_path, capsys):
    """run.json keys the resume on a fingerprint of the weights: new weights under the same path (a
    retrain into the same output_dir) rescore every trace instead of reporting the old model's scores."""
    from mprm_hf.modeling import build_tiny_model

    model = build_tiny_model(tmp_path / "model", seed=1)
    out = tmp_path / "eval"
    assert _evaluate(model, benchmark, out, "--limit", "4") == 0
    old = _lines(out / "scores.jsonl")
    assert _evaluate(model, benchmark, out, "--limit", "4") == 0
    assert "4 already scored" in capsys.readouterr().out
    build_tiny_model(tmp_path / "model", seed=2)  # "retrained" into the same folder
    assert _evaluate(model, benchmark, out, "--limit", "4") == 0
    printed = capsys.readouterr().out
    assert (
        "weights (or dtype) changed" in printed and "0 already scored" in printed and "4 to score" in printed
    )
    new = _lines(out / "scores.jsonl")
    assert [r["id"] for r in new] == [r["id"] for r in old] and new != old
    assert json.loads((out / "run.json").read_text())["weights"] is not None
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left beside the outputs


def test_one_bad_trace_is_a_located_skip_and_the_others_are_scored(
    tiny_model_dir, benchmark, tmp_path, capsys
):
    """A step holding the marker token is skipped at scoring with `test.jsonl:LINE`, an empty step and an
    image path that leaves the folder are skipped at loading (reported), and every other trace is scored."""
    copy = tmp_path / "bench"
    copy.mkdir()
    (copy / "images").symlink_to((benchmark / "images").resolve())
    records = [json.loads(line) for line in (benchmark / "test.jsonl").read_text().splitlines()[:8]]
    records[1]["response"]["steps"][0] = "a step that writes the marker <prm> itself"
    records[3]["response"]["steps"][-1] = "   "
    records[5]["image"] = ["../../../etc/hostname"]
    (copy / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "eval"
    assert _evaluate(tiny_model_dir, copy, out, "--batch-size", "4") == 0
    captured = capsys.readouterr()
    assert "skipped test.jsonl:2 " in captured.err and "1 trace(s) could not be scored" in captured.out
    scored = {record["id"] for record in _lines(out / "scores.jsonl")}
    ids = [record.get("id") for record in records]
    assert len(scored) == 5 and ids[1] not in scored
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["n_traces_skipped"] == 1 and metrics["run"]["n_traces_benchmark"] == 6
    from mprm_hf.data.visualprocessbench import EMPTY_STEP, IMAGE_OUTSIDE, load_visualprocessbench

    _, report = load_visualprocessbench(copy)
    assert report.count(EMPTY_STEP) == 1 and report.count(IMAGE_OUTSIDE) == 1
    allowed, _ = load_visualprocessbench(copy, allow_outside_images=True)
    assert len(allowed) == 7


def test_huge_images_and_over_long_traces_are_bounded(tiny_model_dir, benchmark, tmp_path, capsys):
    """A 12000 x 12000 PNG (a few KB) is refused before it is decoded, as a located skip; a trace longer
    than --max-length is scored up to its last whole step that fits, with the rest counted."""
    from PIL import Image

    copy = tmp_path / "bench"
    shutil.copytree(benchmark, copy, symlinks=True)
    Image.new("1", (12000, 12000)).save(copy / "images" / "huge.png")
    records = [json.loads(line) for line in (benchmark / "test.jsonl").read_text().splitlines()[:4]]
    records[0]["image"] = ["images/huge.png"]
    long = records[2]["response"]
    long["steps"] = [f"Step {n}: the circle is red and the square is blue." for n in range(60)]
    long["process_correctness"] = [1] * 60
    (copy / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "eval"
    assert _evaluate(tiny_model_dir, copy, out, "--max-length", "300") == 0
    err = capsys.readouterr().err
    assert "skipped test.jsonl:1" in err and "12000 x 12000 pixels" in err
    assert "test.jsonl:3" in err and "steps left unscored" in err
    scores = {r["id"]: r for r in _lines(out / "scores.jsonl")}
    assert len(scores) == 3 and any(0 < len(r["scores"]) < 60 for r in scores.values())
