"""What a stranger gets from the Hub: a staged subset is a plain `datasets` dataset with its images, a
trained folder carries its card, and neither names a path of the publisher's disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_dataset
from PIL import Image

from mprm_hf.cli import main as cli_main


def _stage(synthetic_dir: Path, tmp_path: Path, *extra: str) -> Path:
    stage = tmp_path / "stage"
    argv = ["select", "--annotations", str(synthetic_dir / "annotations"), "--alpha", "0.2", "--top-ratio", "0.1",
            "--output", str(tmp_path / "bis10.jsonl"), "--dry-run", "--stage-dir", str(stage),
            "--push-to-hub", "someone/bis-10", "--quiet", *extra]  # fmt: skip
    assert cli_main(argv) == 0
    return stage


def _disk_paths_in(folder: Path, *paths: Path) -> list[str]:
    needles = {str(path.resolve()).encode() for path in paths} | {b"/tmp/"}
    return [str(f) for f in folder.rglob("*") if f.is_file() and any(n in f.read_bytes() for n in needles)]


def test_a_staged_subset_loads_with_plain_datasets_and_trains(
    synthetic_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from mprm_hf import PRMConfig, PRMTrainer

    stage = _stage(synthetic_dir, tmp_path)
    assert _disk_paths_in(stage, tmp_path, synthetic_dir) == []
    selection = json.loads((stage / "selection.json").read_text())
    assert selection["selector"] == "bis" and selection["selector_params"]["alpha"] == 0.2
    assert selection["corpus"] == "annotations" and selection["hub_images"] == "embed"
    assert 0 < selection["counts"]["rollouts_written"] < selection["counts"]["rollouts_total"]
    card = (stage / "README.md").read_text()
    assert 'load_dataset("someone/bis-10", split="train")' in card and "PRMTrainer(" in card

    subset = load_dataset(str(stage), split="train")
    assert len(subset) == selection["counts"]["rollouts_written"]
    assert {"prompt", "completions", "labels", "mc_scores", "images"} <= set(subset.column_names)
    assert isinstance(subset[0]["images"][0], Image.Image)  # decoded, from the bytes in the shard

    args = PRMConfig(output_dir=str(tmp_path / "prm"), max_steps=1, per_device_train_batch_size=2,
                     max_length=384, use_cpu=True, report_to="none", save_strategy="no")  # fmt: skip
    trainer = PRMTrainer(
        str(tiny_model_dir), args, train_dataset=subset.select(range(4)), dataset_name="someone/bis-10"
    )
    assert trainer.train().training_loss > 0
    trainer.save_model()
    model_card = (tmp_path / "prm" / "README.md").read_text()
    assert "someone/bis-10" in model_card and "datasets:\n- someone/bis-10" in model_card


def test_relative_images_resolve_against_the_corpus(synthetic_dir: Path, tmp_path: Path) -> None:
    from mprm_hf.data.stepwise import resolve_images

    stage = _stage(synthetic_dir, tmp_path, "--hub-images", "relative")
    assert _disk_paths_in(stage, tmp_path, synthetic_dir) == []
    subset = load_dataset(str(stage), split="train")
    names = subset[0]["images"]
    assert (
        names and not Path(names[0]).is_absolute() and "resolve_images" in (stage / "README.md").read_text()
    )
    resolved = resolve_images(subset, synthetic_dir)
    assert all(Path(path).is_file() for row in resolved["images"] for path in row)


def test_every_subset_carries_its_selection_record(synthetic_dir: Path, tmp_path: Path) -> None:
    from mprm_hf.selection.provenance import read_selection

    out = tmp_path / "r.parquet"
    argv = ["select", "--annotations", str(synthetic_dir), "--method", "random", "--seed", "3", "--budget", "20",
            "--format", "parquet", "--output", str(out), "--quiet"]  # fmt: skip
    assert cli_main(argv) == 0
    record = read_selection(out)
    assert record["selector"] == "random" and record["selector_params"]["seed"] == 3
    assert record["counts"]["rollouts_selected"] == 20 and (tmp_path / "r.selection.json").is_file()
    assert read_selection(tmp_path / "elsewhere")["selector"].startswith("unknown")


@pytest.mark.parametrize("broken", ["{not json", '{"selector": "bis", "selector_params": [1]}'])
def test_a_broken_selection_record_is_one_located_line(tmp_path: Path, broken: str) -> None:
    from mprm_hf.errors import MPRMError
    from mprm_hf.selection.provenance import read_selection

    (tmp_path / "selection.json").write_text(broken)
    with pytest.raises(MPRMError, match="selection.json"):
        read_selection(tmp_path)


def test_evaluate_update_card_adds_the_benchmark_and_a_save_keeps_it(
    synthetic_dir: Path, tiny_model_dir: Path, tiny_stepwise, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A real `mprm-hf evaluate --update-card` on a trained folder: model-index and prm_threshold join the
    training card, and the next save of the same folder keeps them."""
    from huggingface_hub import ModelCard

    from mprm_hf import PRMConfig, PRMTrainer

    args = PRMConfig(output_dir=str(tmp_path / "prm"), max_steps=1, per_device_train_batch_size=2,
                     max_length=384, use_cpu=True, report_to="none", save_strategy="no")  # fmt: skip
    trainer = PRMTrainer(str(tiny_model_dir), args, train_dataset=tiny_stepwise, dataset_name="me/bis")
    trainer.train()
    trainer.save_model()
    argv = ["evaluate", "--model", str(tmp_path / "prm"), "--benchmark", str(synthetic_dir / "VisualProcessBench"),
            "--out", str(tmp_path / "eval"), "--limit", "6", "--threshold", "0.42", "--update-card"]  # fmt: skip
    assert cli_main(argv) == 0
    card = ModelCard.load(tmp_path / "prm" / "README.md")
    data = card.data.to_dict()
    assert data["prm_threshold"] == 0.42 and data["datasets"] == ["me/bis"]  # the training card, kept
    benchmark = [r for r in card.data.eval_results if r.dataset_name == "VisualProcessBench"]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    overall = next(r for r in benchmark if r.metric_type == "overall_micro_f1")
    assert overall.metric_value == metrics["overall"] and overall.metric_args == {"threshold": 0.42}
    assert "## Evaluation on VisualProcessBench" in card.text
    capsys.readouterr()
    assert cli_main(argv) == 0  # the card changed, the model did not: nothing is scored again
    assert "6 already scored" in capsys.readouterr().out

    trainer.save_model()  # the card is written again on every save: the benchmark results stay
    again = ModelCard.load(tmp_path / "prm" / "README.md")
    assert again.data.to_dict()["prm_threshold"] == 0.42
    assert len([r for r in again.data.eval_results if r.dataset_name == "VisualProcessBench"]) == len(
        benchmark
    )
    assert "## Evaluation on VisualProcessBench" in again.text
