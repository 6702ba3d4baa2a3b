"""`mprm-hf train` and `accelerate launch -m mprm_hf.train`: recipes, DDP and DeepSpeed on the CPU, resume after
a kill, and staging a checkpoint with its model card for the Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parent.parent
ACCELERATE_CONFIGS = REPO_ROOT / "recipes" / "accelerate_configs"
ACCELERATE = Path(sys.executable).parent / "accelerate"


@pytest.fixture(scope="module")
def subset_dir(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small stepwise subset saved as `mprm-hf select` would, with its selection.json sidecar."""
    from mprm_hf.data.stepwise import to_stepwise
    from mprm_hf.data.visualprm400k import load_visualprm400k

    rollouts, _ = load_visualprm400k(synthetic_dir)
    records, _ = to_stepwise(rollouts)
    out = tmp_path_factory.mktemp("subset") / "bis-10"
    records.select(range(96)).save_to_disk(str(out))
    sidecar = {"selector": "bis", "selector_params": {"alpha": 0.2, "top_ratio": 0.1}}
    (out / "selection.json").write_text(json.dumps(sidecar), encoding="utf-8")
    return out


def write_recipe(path: Path, model: Path, dataset: Path, output_dir: Path, **overrides) -> Path:
    recipe = {
        "model_name_or_path": str(model),
        "dataset_name": str(dataset),
        "output_dir": str(output_dir),
        "use_cpu": True,
        "seed": 0,
        "max_length": 384,
        "learning_rate": 3.0e-3,
        "per_device_train_batch_size": 4,
        "logging_steps": 2,
        "save_strategy": "no",
        "disable_tqdm": True,
        **overrides,
    }
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def launch_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        DS_ACCELERATOR="cpu",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


def run(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=launch_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def final_train_metrics(output_dir: Path) -> dict:
    return json.loads((output_dir / "train_results.json").read_text())


def test_cli_recipe_with_overrides_writes_the_model_card(
    subset_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Positional recipe + CLI overrides; a plain `mprm-hf train` (no push) writes the model card beside the
    weights and in every checkpoint, with values read from the config, and an offline push stops before
    anything is trained."""
    from huggingface_hub import ModelCard

    from mprm_hf.errors import MPRMError
    from mprm_hf.train import main

    output_dir = tmp_path / "run"
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir, subset_dir, output_dir, max_steps=50)
    with pytest.raises(MPRMError, match="cannot push someone/tiny-prm: the Hub is offline"):
        main([str(recipe), "--push-to-hub", "--hub_model_id", "someone/tiny-prm"])
    assert not output_dir.exists()  # nothing was loaded, trained or written
    overrides = [
        "--max_steps",
        "3",
        "--eval_fraction",
        "0.25",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--license",
        "apache-2.0",
    ]
    assert main([str(recipe), *overrides, "--hub_model_id", "someone/tiny-prm"]) == 0
    assert final_train_metrics(output_dir)["epoch"] > 0
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 3  # the CLI override beat the recipe's max_steps
    assert not (output_dir / "hub").exists()  # no second copy of the weights
    card = ModelCard.load(output_dir / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and "prm" in data["tags"]
    assert data["model-index"][0]["name"] == "tiny-prm"
    assert data["model-index"][0]["results"]  # held-out step metrics as evaluation results
    text = card.text
    assert "`bis`" in text and "`alpha` | `0.2`" in text and subset_dir.name in text
    assert (
        "| `lr_scheduler_type` | `cosine` |" in text and "SchedulerType" not in text and "Names." not in text
    )
    assert "| `learning_rate` |" in text and "| `step_format` | `prm-token` |" in text
    assert "mprm-hf train" in text and "--max_steps 3" in text
    assert str(tmp_path) not in str(card)  # paths of this disk are not published
    assert (output_dir / "checkpoint-2" / "README.md").is_file()  # every save writes one


@pytest.mark.parametrize(
    "recipe",
    sorted(
        path for path in (REPO_ROOT / "recipes").glob("*/**/config.yaml") if path.parent.name != "tiny-base"
    ),
    ids=lambda path: str(path.parent.relative_to(REPO_ROOT / "recipes")),
)
def test_shipped_recipes_parse(recipe: Path) -> None:
    from mprm_hf.train import parse_args

    # use_cpu: the GPU recipes ask for bf16, which TrainingArguments checks against this GPU-less machine
    argv = [str(recipe), "--output_dir", "unused", "--use_cpu", "true"]
    script_args, training_args = parse_args(argv)
    assert training_args.num_train_epochs >= 1
    if (
        "tiny-cpu" not in str(recipe)
    ):  # the real set-ups keep the schedule of docs/definitions.md#model-and-training and a frozen vision tower
        assert training_args.lr_scheduler_type == "cosine" and training_args.warmup_steps == 0.05
        assert training_args.weight_decay == 0.05 and training_args.freeze_vision_tower
        assert script_args.model_name_or_path and script_args.dataset_name


@pytest.mark.slow
def test_tiny_cpu_recipe_builds_the_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mprm-hf train recipes/tiny-cpu/config.yaml` on a fresh checkout: corpus, BIS subset and model are built."""
    from mprm_hf.data import synthetic
    from mprm_hf.train import main

    monkeypatch.setattr(synthetic, "DEFAULT_ROLLOUTS", 300)  # the recipe's path, at a test's size
    monkeypatch.setattr(synthetic, "DEFAULT_BENCHMARK_TRACES", 10)
    root, output_dir = tmp_path / "embedded", tmp_path / "out"
    recipe = REPO_ROOT / "recipes" / "tiny-cpu" / "config.yaml"
    argv = [str(recipe), "--embedded_root", str(root), "--output_dir", str(output_dir), "--max_steps", "2"]
    assert main(argv) == 0
    selection = json.loads((root / "bis-10" / "selection.json").read_text())
    assert selection["selector"] == "bis"
    assert selection["selector_params"] == {"top_ratio": 0.1, "alpha": 0.2, "threshold": 0.0}
    assert 0 < selection["counts"]["rollouts_selected"] < selection["counts"]["rollouts_total"]
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "eval_results.json").is_file()
    # fine-tuned from the shipped pretrained base, which its card names; the embedded root holds no model
    assert "fine-tuned from `mprm_hf/assets/tiny-base`" in (output_dir / "README.md").read_text()
    assert json.loads((output_dir / "config.json").read_text())["prm_step_format"] == "visualprm"
    built = sorted(path.name for path in root.iterdir())
    assert main(argv) == 0  # a second run reuses what is there
    assert sorted(path.name for path in root.iterdir()) == built


def test_bad_recipe_is_a_one_line_error(tmp_path: Path) -> None:
    from mprm_hf.errors import MPRMError
    from mprm_hf.train import main

    with pytest.raises(MPRMError, match="recipe not found"):
        main([str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: x\nnot_a_field: 3\n", encoding="utf-8")
    with pytest.raises(MPRMError, match="not_a_field"):
        main([str(bad)])
    broken = tmp_path / "broken.yaml"
    broken.write_text("output_dir: x\nlearning_rate: [1e-5\n", encoding="utf-8")
    with pytest.raises(MPRMError, match=r"broken\.yaml:\d+: not valid YAML") as error:
        main([str(broken)])
    assert "\n" not in str(error.value)


# DeepSpeed owns the device (no use_cpu); on a machine without GPUs its process group needs gloo.
DEEPSPEED_ON_CPU = ["--use_cpu", "false", "--ddp_backend", "gloo"]
LAUNCHES = {
    "ddp": [],
    "zero2": DEEPSPEED_ON_CPU,
    "zero3": DEEPSPEED_ON_CPU,
    "fsdp": [],  # FSDP2 over gloo on the CPU; the file's bf16 mixed precision is a GPU setting
}


@pytest.mark.slow
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_accelerate_launch_two_processes(
    launch: str, subset_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`accelerate launch` with each shipped config, 2 processes on the CPU, trains and saves full weights."""
    output_dir = tmp_path / launch
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir, subset_dir, output_dir, max_steps=4)
    accelerate = [str(ACCELERATE), "launch", "--config_file", str(ACCELERATE_CONFIGS / f"{launch}.yaml")]
    accelerate += ["--num_processes", "2"] + (["--mixed_precision", "no"] if launch == "fsdp" else [])
    run([*accelerate, "-m", "mprm_hf.train", "--config", str(recipe), *LAUNCHES[launch]], timeout=500)
    # 4 steps x 4 rollouts per process x 2 processes, counted on each rank and summed over both
    assert final_train_metrics(output_dir)["prm_rollouts"] == 32
    # the saved checkpoint loads back (ZeRO-3 gathers its shards, DeepSpeed writes the tied head too)
    from mprm_hf.modeling import load_model_and_processor

    initial = dict(load_model_and_processor(tiny_model_dir)[0].named_parameters())
    trained = dict(load_model_and_processor(output_dir)[0].named_parameters())
    assert initial.keys() == trained.keys()
    changed = {name for name in initial if not torch.equal(initial[name], trained[name])}
    assert any(".language_model.layers." in name for name in changed)
    from mprm_hf.prm_trainer import projector_parameters, vision_tower_parameters

    model = load_model_and_processor(tiny_model_dir)[0]
    tower = {name for name, _ in vision_tower_parameters(model)}
    assert tower and not tower & changed  # the frozen vision tower
    assert {name for name, _ in projector_parameters(model)} & changed  # the projector trains
    assert all(torch.isfinite(tensor).all() for tensor in trained.values())


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(
    subset_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = {"max_steps": 24, "save_strategy": "steps", "save_steps": 6, "per_device_train_batch_size": 2}
    train = [sys.executable, "-m", "mprm_hf.cli", "train"]

    straight = tmp_path / "straight"
    run([*train, str(write_recipe(tmp_path / "a.yaml", tiny_model_dir, subset_dir, straight, **settings))])

    interrupted = tmp_path / "interrupted"
    recipe = write_recipe(tmp_path / "b.yaml", tiny_model_dir, subset_dir, interrupted, **settings)
    process = subprocess.Popen(
        [*train, str(recipe)],
        cwd=REPO_ROOT,
        env=launch_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = interrupted / "checkpoint-6"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:  # trainer_state.json is the last file of a checkpoint
                json.loads((checkpoint / "trainer_state.json").read_text())
                break
            except (OSError, ValueError):
                time.sleep(0.01)
        process.kill()
    finally:
        process.wait()
    assert process.returncode != 0, "the run finished before it could be killed"
    assert not (interrupted / "model.safetensors").exists()

    run([*train, str(recipe), "--resume_from_checkpoint", str(checkpoint)])
    expected, resumed = (
        load_file(straight / "model.safetensors"),
        load_file(interrupted / "model.safetensors"),
    )
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)


def test_resume_latest_passes_over_a_half_written_checkpoint_and_keeps_the_totals(
    tiny_model_dir: Path, subset_dir: Path, tmp_path: Path
) -> None:
    """`--resume_from_checkpoint true` takes the last complete checkpoint (a save killed midway has no
    trainer_state.json), the running totals count on from the checkpoint instead of restarting at 0, and
    resuming a finished run trains nothing."""
    train = [sys.executable, "-m", "mprm_hf.cli", "train"]
    out = tmp_path / "run"
    settings = {
        "save_strategy": "steps",
        "save_steps": 2,
        "per_device_train_batch_size": 2,
        "logging_steps": 1,
    }
    run(
        [
            *train,
            str(write_recipe(tmp_path / "a.yaml", tiny_model_dir, subset_dir, out, max_steps=2, **settings)),
        ]
    )
    half = out / "checkpoint-3"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"")  # what a kill during a save leaves
    longer = write_recipe(tmp_path / "b.yaml", tiny_model_dir, subset_dir, out, max_steps=4, **settings)
    run([*train, str(longer), "--resume_from_checkpoint", "true"])
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    totals = [entry["prm_rollouts"] for entry in state["log_history"] if "prm_rollouts" in entry]
    assert state["global_step"] == 4 and totals[-1] == 4 * 2, totals
    again = run([*train, str(longer), "--resume_from_checkpoint", "true"])
    assert "already reached its last step" in again.stdout
    assert not (out / "checkpoint-5").exists()
    fresh = subprocess.run(
        [*train, str(longer), "--output_dir", str(tmp_path / "empty"), "--resume_from_checkpoint", "true"],
        cwd=REPO_ROOT, env=launch_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert fresh.returncode == 1
    assert "no complete checkpoint to resume from" in fresh.stderr and "Traceback" not in fresh.stderr


@pytest.mark.slow
def test_grpo_under_accelerate_launch_two_processes(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`accelerate launch -m mprm_hf.grpo` with 2 processes on the CPU: the questions are built once, both
    ranks train, the main one writes the policy folder once."""
    out = tmp_path / "policy"
    accelerate = [str(ACCELERATE), "launch", "--config_file", str(ACCELERATE_CONFIGS / "ddp.yaml")]
    argv = ["--num_processes", "2", "-m", "mprm_hf.grpo", "--config", str(REPO_ROOT / "recipes/tiny-cpu/grpo.yaml"),
            "--reward_model", str(tiny_model_dir), "--output_dir", str(out), "--embedded_root", str(tmp_path / "e"),
            "--questions", "16", "--eval_questions", "4", "--max_steps", "3", "--per_device_train_batch_size", "4",
            "--num_generations", "2", "--logging_steps", "1", "--disable_tqdm", "true"]  # fmt: skip
    result = run([*accelerate, *argv], timeout=300)
    assert result.stdout.count("policy written to") == 1
    record = json.loads((out / "grpo.json").read_text())
    assert record["steps"] == 3 and len(record["learning_curve"]["prm_reward"]) == 3
    assert record["reward_fallbacks"] == {}


@pytest.mark.parametrize("module", ["mprm_hf.train", "mprm_hf.grpo"])
def test_a_launched_module_fails_in_one_line(module: str, tmp_path: Path) -> None:
    """`python -m mprm_hf.train` / `mprm_hf.grpo` (what `accelerate launch -m` runs) exit through the CLI:
    exit code 1 and its one-line error, even though they leave without the interpreter's teardown."""
    missing = tmp_path / "missing.yaml"
    result = subprocess.run(
        [sys.executable, "-m", module, "--config", str(missing)],
        cwd=REPO_ROOT, env=launch_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    command = module.split(".")[-1]
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"mprm-hf {command}: error: {missing}: recipe not found"
