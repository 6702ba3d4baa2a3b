"""`mprm-hf sweep` and `mprm-hf quickstart` end to end on a small world, with capped training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mprm_hf.cli import main as cli_main

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny-cpu" / "config.yaml"


def sweep_recipe(tmp_path: Path, **overrides) -> Path:
    recipe = {
        "output_dir": str(tmp_path / "sweep"),
        "train_recipe": str(RECIPE),
        "train_args": ["--max_steps", "2"],
        "rollouts": 120,
        "benchmark_traces": 12,
        "fractions": [0.5],
        "selectors": {"bis": {"alpha": {0.5: 0.05}}, "random": {}},
        "seeds": [0, 1],
        "compute": ["single_pass", "equal_steps"],
        "bon_questions": 8,
        **overrides,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_sweep_runs_resumes_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["sweep", "--config", str(sweep_recipe(tmp_path))]) == 0
    out = tmp_path / "sweep"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # 2 seeds x (full + 2 selectors x 2 compute policies)
    assert len(rows) == 10
    for row in rows:
        assert (
            0 <= row["auc"] <= 1 and 0 <= row["overall_calibrated"] <= 1 and 0 <= row["oracle_overall"] <= 1
        )
        assert row["tokens"] > 0 and row["train_s"] > 0 and row["optimizer_steps"] == 2
        assert 0 <= row["bon_ci"][0] <= row["bon"] <= row["bon_ci"][1] <= 1
    bis = next(r for r in rows if r["selector"] == "bis")
    assert bis["params"] == {"alpha": 0.05} and bis["rollouts"] < 120
    table = (out / "results.md").read_text()
    assert "Position-only scorer" in table and "| single_pass | bis | 0.5 | 2 |" in table
    assert "| BoN@8 (mean) |" in table and "Best-of-8 on the world's pool: random choice" in table
    references = json.loads((out / "references.json").read_text())["default"]
    assert 0 <= references["bon_random"] <= references["bon_majority"] <= references["bon_oracle"] <= 1
    assert (out / "plot-default-single_pass.png").stat().st_size > 1000
    assert (out / "default" / "calibration" / "VisualProcessBench" / "test.jsonl").is_file()
    results = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    capsys.readouterr()
    # a second run trains nothing: every result exists
    assert cli_main(["sweep", "--config", str(sweep_recipe(tmp_path))]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == results
    assert "10 runs" in capsys.readouterr().out


def test_sweep_recipe_errors_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["sweep", "--config", str(sweep_recipe(tmp_path, selectors={"bogus": {}}))]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "field 'selectors'" in error and "bogus" in error
    assert cli_main(["sweep", "--config", str(sweep_recipe(tmp_path, fractions=[1.5]))]) == 1
    assert "field 'fractions'" in capsys.readouterr().err
    assert cli_main(["sweep", "--config", str(sweep_recipe(tmp_path, fractions="0.1"))]) == 1
    assert "field 'fractions' must be a list" in capsys.readouterr().err
    assert cli_main(["sweep", "--config", str(sweep_recipe(tmp_path, selectors=["bis"]))]) == 1
    assert "field 'selectors' must be a mapping" in capsys.readouterr().err
    assert cli_main(["sweep", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml: recipe not found" in capsys.readouterr().err
    assert cli_main(["sweep", "--config", str(sweep_recipe(tmp_path, bon_candidates=4))]) == 1
    assert "field 'bon_candidates' must be at least 8" in capsys.readouterr().err


def test_shipped_sweep_recipes_parse() -> None:
    from mprm_hf.sweep import SweepConfig, plan, worlds

    root = Path(__file__).resolve().parent.parent / "recipes" / "sweeps"
    tiny = SweepConfig.from_yaml(root / "tiny.yaml")
    assert set(tiny.selectors) == {"bis", "random"} and tiny.fractions == [0.1]
    assert tiny.compute == ["single_pass", "equal_steps"]  # the claim, at equal epochs and at equal steps
    runs_per_policy = len(tiny.fractions) * len(tiny.selectors)
    assert len(plan(tiny, "default")) == len(tiny.seeds) * (1 + 2 * runs_per_policy)
    pseudo = SweepConfig.from_yaml(root / "pseudo-positive.yaml")
    assert [name for name, _ in worlds(pseudo)] == [
        "pseudo_positive=0.0",
        "pseudo_positive=0.15",
        "pseudo_positive=0.5",
    ]
    SweepConfig.from_yaml(root / "visualprm400k-7b.yaml")


@pytest.mark.slow
def test_quickstart_prints_the_table_the_sentence_and_stages(tmp_path: Path, capsys) -> None:
    out = tmp_path / "qs"
    argv = [
        "quickstart",
        "--output-dir",
        str(out),
        "--rollouts",
        "200",
        "--max-steps",
        "2",
        "--bon-questions",
        "8",
    ]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "selector" in printed and "F1 cal." in printed
    assert "position-only scorer (1 - j/n, no model)" in printed and "chance" in printed
    assert "BIS-10% reached" in printed and "random-10% reached" in printed
    assert (out / "quickstart.png").is_file()
    assert "majority (reference)" in printed and "full data [mean]" in printed and "BIS-10% [min]" in printed
    assert "Best-of-8 by mean step reward: full data" in printed and "BIS-10% against random-10%" in printed
    bon = json.loads((out / "bon" / "bon.json").read_text())
    assert [model["label"] for model in bon["models"]] == ["BIS-10%", "random-10%", "full data"]
    assert all(model["cached"] for model in bon["models"])  # the sweep's runs scored the pool already
    hub = [p for p in out.iterdir() if p.name.endswith(".hub")]
    assert len(hub) == 1 and (hub[0] / "README.md").is_file()
    model_cards = [card for card in out.rglob("README.md") if (card.parent / "model.safetensors").is_file()]
    assert model_cards and all("- prm" in card.read_text() for card in model_cards)  # every trained run
    assert "mprm-hf demo --model" in printed
