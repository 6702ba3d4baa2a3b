"""`mprm-hf pretrain`: the tiny base VLM from nothing, through the real command; its data (fresh scenes of
their own stream, a held-out tenth, answers-only labels) and what it writes (a folder plain transformers
loads, `vqa_eval.json`, the card)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mprm_hf.errors import MPRMError
from mprm_hf.pretrain import (
    DEFAULT_MIX,
    QUESTION_KINDS,
    VQACollator,
    VQADataset,
    held_out_scene,
    parse_args,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE = REPO_ROOT / "recipes" / "tiny-base" / "config.yaml"


def dataset(split: str, size: int = 40, **kwargs) -> VQADataset:
    return VQADataset(size, seed=0, split=split, mix=DEFAULT_MIX, questions_per_scene=4, **kwargs)


def test_training_never_draws_a_held_out_scene_and_evaluation_only_draws_them() -> None:
    train, evaluation = dataset("train", 300), dataset("eval", 60)
    assert not any(held_out_scene(train[i]["scene"]) for i in range(len(train)))
    assert all(held_out_scene(evaluation[i]["scene"]) for i in range(len(evaluation)))
    # the held-out tenth is a tenth of the scene space, so training is not starved of scenes
    assert len({tuple(train[i]["scene"]) for i in range(len(train))}) > 250


def test_examples_are_a_function_of_seed_split_and_index() -> None:
    first, again = dataset("train"), dataset("train")
    assert [first[i] for i in (7, 3, 7)] == [again[i] for i in (7, 3, 7)]
    other_seed = VQADataset(40, seed=1, split="train", mix=DEFAULT_MIX, questions_per_scene=4)
    assert [first[i]["scene"] for i in range(10)] != [other_seed[i]["scene"] for i in range(10)]


def test_shuffled_pictures_keep_the_questions_and_swap_the_scene() -> None:
    real, shuffled = dataset("eval"), dataset("eval", shuffled_pictures=True)
    for index in range(10):
        assert real[index]["questions"] == shuffled[index]["questions"]
        assert shuffled[index]["scene"] == real[(index + 1) % len(real)]["scene"]


def test_the_base_never_sees_a_reasoning_step() -> None:
    """Every question is one of the kinds, and none carries a step of a trace or a marker."""
    data = dataset("train", 200)
    kinds = {kind for i in range(len(data)) for kind in data[i]["kinds"]}
    assert kinds <= set(QUESTION_KINDS) and "verify" in kinds
    texts = [text for i in range(len(data)) for text in data[i]["questions"] + data[i]["answers"]]
    assert not any("<prm>" in text or "Process:" in text or "Step" in text for text in texts)


def test_the_collator_labels_the_answers_only(tiny_model_dir: Path) -> None:
    from mprm_hf.modeling import load_model_and_processor

    _, processor = load_model_and_processor(tiny_model_dir)
    examples = [dataset("train")[i] for i in range(3)]
    batch = VQACollator(processor)(examples)
    tokenizer = processor.tokenizer
    for row, example in enumerate(examples):
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        expected = "".join(answer + "<|im_end|>" for answer in example["answers"])
        assert tokenizer.decode(labelled) == expected
        assert batch["attention_mask"][row].sum() > len(labelled)  # the picture and the questions are not


def test_a_bad_question_mix_is_one_clear_error() -> None:
    with pytest.raises(MPRMError, match="unknown kind 'colour'"):
        parse_args([str(RECIPE), "--question_mix", '{"colour": 1.0}'])
    with pytest.raises(MPRMError, match="non-negative"):
        parse_args([str(RECIPE), "--question_mix", '{"verify": -1.0}'])


def test_the_recipe_parses_as_the_shipped_base_was_made() -> None:
    config = parse_args([str(RECIPE)])
    assert config.text_layers >= 4 and config.freeze_vision_tower and config.use_cpu
    assert config.question_mix["verify"] > 0  # the shipped base asks verification questions (docs/model.md)


def test_pretrain_command_writes_a_base_plain_transformers_loads(tmp_path: Path) -> None:
    """A few steps of the real command; the folder loads with Auto classes and answers a question."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import is_torchvision_available

    from mprm_hf.data.synthetic import draw_scene, random_scene
    from mprm_hf.modeling import Qwen2VLImageTextProcessor
    from mprm_hf.pretrain import vqa_messages

    out = tmp_path / "base"
    command = [
        sys.executable, "-m", "mprm_hf.cli", "pretrain", str(RECIPE), "--output_dir", str(out),
        "--max_steps", "3", "--per_device_train_batch_size", "2", "--questions_per_scene", "2",
        "--eval_scenes", "4", "--eval_steps", "2", "--logging_steps", "1", "--text_layers", "2",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "held-out VQA accuracy after 3 steps" in result.stdout

    record = json.loads((out / "vqa_eval.json").read_text())
    assert record["steps"] == 3 and record["seed"] == 0 and record["wall_time_s"] > 0
    assert "CPU" in record["machine"] and record["recipe"]["text_layers"] == 2
    for row in record["vqa"].values():
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["shuffled_pictures"] <= 1
    assert "all" in record["vqa"]
    steps = [step for step, _ in record["learning_curve"]["eval_vqa_accuracy"]]
    assert steps == sorted(set(steps)) == [2, 3]
    assert (out / "learning_curve.png").stat().st_size > 0
    card = (out / "README.md").read_text()
    assert "mprm-hf pretrain" in card and "vqa_eval.json" in card and str(tmp_path) not in card
    assert not list(tmp_path.glob("*.tmp*"))  # written as one folder swap

    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    # plain AutoProcessor builds the stock Qwen2-VL processor where torchvision imports (its video half needs
    # it); without torchvision, the image-only processor the folder also loads as (docs/model.md)
    loader = AutoProcessor if is_torchvision_available() else Qwen2VLImageTextProcessor
    processor = loader.from_pretrained(out)
    text = processor.apply_chat_template(
        vqa_messages(["How many shapes are there?"]), add_generation_prompt=True
    )
    inputs = processor(text=[text], images=[draw_scene(random_scene(random.Random(0)))], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_the_embedded_base_is_the_shipped_one_and_random_weights_are_one_flag_away(tmp_path: Path) -> None:
    import torch

    from mprm_hf.embedded import TINY_BASE, embedded_base
    from mprm_hf.modeling import load_model_and_processor

    assert embedded_base() == TINY_BASE and (TINY_BASE / "model.safetensors").stat().st_size < 25 * 2**20
    record = json.loads((TINY_BASE / "vqa_eval.json").read_text())
    assert (
        record["command"].startswith("mprm-hf pretrain") and record["machine"] and record["wall_time_s"] > 0
    )
    assert record["vqa"]["verify"]["accuracy"] > record["vqa"]["verify"]["shuffled_pictures"]
    random_base = embedded_base("random", tmp_path)
    assert random_base == tmp_path / "tiny-qwen2-vl" and (random_base / "config.json").is_file()
    shipped, _ = load_model_and_processor(TINY_BASE)
    untrained, _ = load_model_and_processor(random_base)
    shapes = [
        {k: v for k, v in m.config.to_dict().items() if k != "_name_or_path"} for m in (shipped, untrained)
    ]
    assert shapes[0] == shapes[1]  # the ablation differs in its weights only
    assert not torch.equal(shipped.get_input_embeddings().weight, untrained.get_input_embeddings().weight)
    with pytest.raises(MPRMError, match="embedded base must be one of pretrained, random"):
        embedded_base("bogus", tmp_path)
