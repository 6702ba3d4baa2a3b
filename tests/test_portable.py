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

# One fresh interpreter (each start costs seconds) with the Hub out of reach, in two parts, each printing a
# JSON line. First plain transformers, before anything imports mprm_hf: what a user without mprm-hf gets
# from each saved folder. Then mprm_hf from this checkout: a model and a dataset in the local Hub cache
# load, uncached ones are one line each; last the process becomes `python -m mprm_hf.cli score ...`.
FRESH_INTERPRETER = r"""
import json, runpy, sys
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

setup = json.loads(sys.argv[1])
plain = []
for folder in setup["folders"]:
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    try:
        processor = AutoProcessor.from_pretrained(folder)
    except Exception as error:
        plain.append({"folder": folder, "raised": type(error).__name__, "message": str(error)})
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
    plain.append(result)
print(json.dumps({"plain": plain, "mprm_hf_imported": "mprm_hf" in sys.modules}), flush=True)

sys.path.insert(0, setup["repo"])
from mprm_hf.data.locate import locate_dataset
from mprm_hf.errors import MPRMError
from mprm_hf.modeling import load_model_and_processor

hub = {"cached": type(load_model_and_processor("cached/tiny-prm")[1]).__name__}
for name, call in [
    ("model", lambda: load_model_and_processor("someone/some-model")),
    ("dataset", lambda: locate_dataset("someone/some-data", allow_patterns=None)),
    ("cached dataset", lambda: str(locate_dataset("cached/data", allow_patterns=None))),
]:
    try:
        hub[name] = call()
    except MPRMError as error:
        hub[name] = str(error)
print(json.dumps({"hub": hub, "module": sys.modules["mprm_hf"].__file__}), flush=True)
sys.argv = ["mprm-hf", *setup["cli"]]
runpy.run_module("mprm_hf.cli", run_name="__main__")
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


@pytest.fixture(scope="module")
def fresh_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """FRESH_INTERPRETER run on a built and a trainer-saved folder, with the Hub endpoint a closed port,
    offline mode unset, a Hub cache holding `cached/tiny-prm` and `cached/data`, and no path to this
    checkout until the mprm_hf part adds it (isolated mode)."""
    tmp_path = tmp_path_factory.mktemp("fresh")
    folders = [tiny_model_dir, _trainer_saved_model(tiny_model_dir, tmp_path)]
    endpoint = _closed_endpoint()
    cache = tmp_path / "hub"
    _populate_hub_cache(cache, "cached/tiny-prm", tiny_model_dir)
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("{}\n")
    _populate_hub_cache(cache, "cached/data", data, kind="datasets")
    steps = tmp_path / "steps.txt"
    steps.write_text("The square is red.\n\nSo red.\n")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(cache), NO_PROXY="127.0.0.1")
    setup = {
        "folders": list(map(str, folders)),
        "repo": str(REPO_ROOT),
        "cli": ["score", "--model", "someone/some-model", "--question", "Which?", "--steps", str(steps)],
    }
    done = subprocess.run(
        [sys.executable, "-I", "-c", FRESH_INTERPRETER, json.dumps(setup)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2, done.stderr[-3000:]
    return {**lines[0], **lines[1], "endpoint": endpoint, "setup": setup, "done": done}


def test_saved_folders_load_with_plain_transformers(fresh_run: dict) -> None:
    """Without mprm_hf, a built and a trained folder give an image-capable processor whose pixel values
    the model runs on, or an error naming what is missing (torchvision here); never a tokenizer."""
    assert not fresh_run["mprm_hf_imported"]
    assert [result["folder"] for result in fresh_run["plain"]] == fresh_run["setup"]["folders"]
    for result in fresh_run["plain"]:
        if "raised" in result:
            assert result["raised"] == "ImportError" and "torchvision" in result["message"].lower()
        else:
            assert result["type"] == "Qwen2VLProcessor" and result["image_capable"], result
            assert result["pixel_values"] and result["logits"][0] == 1, result


def test_an_unreachable_hub_fails_fast_in_one_line_and_the_cache_still_answers(fresh_run: dict) -> None:
    """With the endpoint refusing connections and offline mode unset, this checkout's mprm_hf reads the
    Hub cache, and an uncached model or dataset is one line (the CLI exits 1 with it), with no retries."""
    hub, endpoint = fresh_run["hub"], fresh_run["endpoint"]
    assert Path(fresh_run["module"]).resolve().is_relative_to(REPO_ROOT)
    assert hub["cached"] == "Qwen2VLImageTextProcessor"
    assert hub["model"] == (
        f"someone/some-model: the Hub ({endpoint}) cannot be reached and the model is not in the local cache "
        "(set HF_HUB_OFFLINE=1 to skip the network)"
    )
    assert hub["dataset"].startswith(f"someone/some-data: the Hub ({endpoint}) cannot be reached and the")
    assert Path(hub["cached dataset"], "test.jsonl").read_text() == "{}\n"
    done = fresh_run["done"]
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == f"mprm-hf score: error: {hub['model']}"


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
