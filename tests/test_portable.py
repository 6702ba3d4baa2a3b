"""Saved folders load without mprm_hf (an image processor or a loud error, never a bare tokenizer), and
Hub loads fail fast and in one line when the Hub cannot be reached, while the local Hub cache still works."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from PIL import Image
from transformers import AutoProcessor
from transformers.utils import is_torchvision_available

from mprm_hf.data.stepwise import STEPWISE_FEATURES
from mprm_hf.errors import MPRMError
from mprm_hf.modeling import Qwen2VLImageTextProcessor, build_tiny_model, load_model_and_processor
from mprm_hf.prm_config import PRMConfig
from mprm_hf.prm_trainer import PRMTrainer

REPO_ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter that never imports mprm_hf: what a user of plain transformers gets from each
# folder given on the command line, one JSON line each.
PLAIN_TRANSFORMERS = r"""
import json, sys
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

for folder in sys.argv[1:]:
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    try:
        processor = AutoProcessor.from_pretrained(folder)
    except Exception as error:
        print(json.dumps({"folder": folder, "raised": type(error).__name__, "message": str(error)}))
        continue
    result = {"folder": folder, "type": type(processor).__name__,
              "image_capable": hasattr(processor, "image_processor")}
    if result["image_capable"]:
        content = [{"type": "image"}, {"type": "text", "text": "Which colour?"}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
        batch = processor(text=[text], images=[Image.new("RGB", (64, 64), "red")], return_tensors="pt")
        result["pixel_values"] = "pixel_values" in batch
        with torch.no_grad():
            result["logits"] = list(model(**batch).logits.shape)
    print(json.dumps(result))
assert "mprm_hf" not in sys.modules, "the fresh interpreter imported mprm_hf"
"""


def _trainer_saved_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A folder written by `PRMTrainer.save_model` after one training step on two hand-made rollouts."""
    image = tmp_path / "red.png"
    Image.new("RGB", (64, 64), "red").save(image)
    rows = {
        "id": ["a", "b"],
        "source": ["hand", "hand"],
        "images": [[str(image)], [str(image)]],
        "prompt": ["<image>\nWhat colour is the square?"] * 2,
        "completions": [["The square is red.", "So red."], ["The square is blue."]],
        "labels": [[True, True], [False]],
        "mc_scores": [[1.0, 1.0], [0.0]],
    }
    train = datasets.Dataset.from_dict(rows, features=STEPWISE_FEATURES)
    model, processor = load_model_and_processor(tiny_model_dir)
    args = PRMConfig(
        output_dir=str(tmp_path / "trained"),
        use_cpu=True,
        max_steps=1,
        per_device_train_batch_size=2,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = PRMTrainer(model=model, args=args, train_dataset=train, processing_class=processor)
    trainer.train()
    trainer.save_model(args.output_dir)
    return Path(args.output_dir)


def _fresh_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that would put this checkout on a subprocess's path."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def test_saved_folders_load_with_plain_transformers(tiny_model_dir: Path, tmp_path: Path) -> None:
    """In an interpreter without mprm_hf, a built and a trained folder give an image-capable processor
    whose pixel values the model runs on, or an error naming what is missing; never a tokenizer."""
    folders = [tiny_model_dir, _trainer_saved_model(tiny_model_dir, tmp_path)]
    done = subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_TRANSFORMERS, *map(str, folders)],
        cwd=tmp_path,
        env=_fresh_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [result["folder"] for result in results] == list(map(str, folders))
    for result in results:
        if "raised" in result:
            assert result["raised"] == "ImportError" and "torchvision" in result["message"].lower()
        else:
            assert result["type"] == "Qwen2VLProcessor" and result["image_capable"], result
            assert result["pixel_values"] and result["logits"][0] == 1, result


def test_this_environment_builds_the_stock_processor_or_names_torchvision(tiny_model_dir: Path) -> None:
    """Which branch plain `AutoProcessor` takes here: the stock processor where torchvision imports, an
    ImportError naming it where not (this project's CPU environment); mprm_hf's loader works in both."""
    if is_torchvision_available():
        assert type(AutoProcessor.from_pretrained(tiny_model_dir)).__name__ == "Qwen2VLProcessor"
    else:
        with pytest.raises(ImportError, match="(?i)torchvision"):
            AutoProcessor.from_pretrained(tiny_model_dir)
        assert isinstance(load_model_and_processor(tiny_model_dir)[1], Qwen2VLImageTextProcessor)


def test_a_folder_saved_before_the_stock_layout_still_loads(tmp_path: Path) -> None:
    """Folders that name `Qwen2VLImageTextProcessor` (built before the stock layout) load as before."""
    folder = build_tiny_model(tmp_path / "old")
    for name in ("processor_config.json", "tokenizer_config.json"):
        config = json.loads((folder / name).read_text())
        config.pop("video_processor", None)
        (folder / name).write_text(json.dumps({**config, "processor_class": "Qwen2VLImageTextProcessor"}))
    _, processor = load_model_and_processor(folder)
    assert isinstance(processor, Qwen2VLImageTextProcessor)
    assert isinstance(AutoProcessor.from_pretrained(folder), Qwen2VLImageTextProcessor)
    processor.save_pretrained(folder)  # saving again moves it to the stock layout
    assert json.loads((folder / "processor_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"


def _closed_endpoint() -> str:
    """An endpoint on a local port nobody listens on: a connect there is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _populate_hub_cache(cache: Path, repo: str, folder: Path, kind: str = "models") -> None:
    """Lay `folder` out as a snapshot of `repo` in the Hub cache, as a download would have."""
    commit = "0" * 40
    root = cache / f"{kind}--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).symlink_to(file)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


# Run with the Hub out of reach: a cached model and dataset load, an uncached model and dataset are one
# line each; then the process becomes `python -m mprm_hf.cli score --model someone/some-model ...`
# (one interpreter for both, as each start costs seconds).
UNREACHABLE_HUB = r"""
import json, runpy, sys
from mprm_hf.data.locate import locate_dataset
from mprm_hf.errors import MPRMError
from mprm_hf.modeling import load_model_and_processor

results = {"cached": type(load_model_and_processor("cached/tiny-prm")[1]).__name__}
for name, call in [
    ("model", lambda: load_model_and_processor("someone/some-model")),
    ("dataset", lambda: locate_dataset("someone/some-data", allow_patterns=None)),
    ("cached dataset", lambda: str(locate_dataset("cached/data", allow_patterns=None))),
]:
    try:
        results[name] = call()
    except MPRMError as error:
        results[name] = str(error)
print(json.dumps(results), flush=True)
sys.argv = ["mprm-hf", *sys.argv[1:]]
runpy.run_module("mprm_hf.cli", run_name="__main__")
"""


def test_an_unreachable_hub_fails_fast_in_one_line_and_the_cache_still_answers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    endpoint = _closed_endpoint()
    cache = tmp_path / "hub"
    _populate_hub_cache(cache, "cached/tiny-prm", tiny_model_dir)
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("{}\n")
    _populate_hub_cache(cache, "cached/data", data, kind="datasets")
    steps = tmp_path / "steps.txt"
    steps.write_text("The square is red.\n\nSo red.\n")
    env = {**_fresh_env(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(cache), NO_PROXY="127.0.0.1")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.pop("HF_HUB_OFFLINE")
    env.pop("TRANSFORMERS_OFFLINE", None)
    score = ["score", "--model", "someone/some-model", "--question", "Which colour?", "--steps", str(steps)]
    done = subprocess.run(
        [sys.executable, "-c", UNREACHABLE_HUB, *score],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    results = json.loads(done.stdout.splitlines()[-1])
    assert results["cached"] == "Qwen2VLImageTextProcessor"
    assert results["model"] == (
        f"someone/some-model: the Hub ({endpoint}) cannot be reached and the model is not in the local cache "
        "(set HF_HUB_OFFLINE=1 to skip the network)"
    )
    assert results["dataset"].startswith(f"someone/some-data: the Hub ({endpoint}) cannot be reached and the")
    assert Path(results["cached dataset"], "test.jsonl").read_text() == "{}\n"
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == f"mprm-hf score: error: {results['model']}"


def test_the_probe_is_asked_once_and_names_what_could_not_reach_the_hub(monkeypatch) -> None:
    """`ensure_hub_reachable` (the push path's check) raises one line; the answer is kept per process."""
    from mprm_hf import hub_access

    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(hub_access, "_connects", lambda address: calls.append(address) or False)
    endpoint = _closed_endpoint()
    monkeypatch.setattr(hub_access.constants, "ENDPOINT", endpoint)
    hub_access.endpoint_reachable.cache_clear()
    try:
        for _ in range(2):
            with pytest.raises(MPRMError, match=r"^you/model: the Hub \(http://127\.0\.0\.1:\d+\)"):
                hub_access.ensure_hub_reachable("you/model")
    finally:
        hub_access.endpoint_reachable.cache_clear()
    assert calls == [("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))]
