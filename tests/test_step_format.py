"""The shared input builder: token layout of both formats, truncation rule, labels, reward logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mprm_hf.errors import MPRMError
from mprm_hf.modeling import load_model_and_processor
from mprm_hf.step_format import (
    encode_traces,
    forward_step_reward_logits,
    get_step_format,
    model_inputs,
    prepare_model_and_processor,
    reward_token_ids,
    step_reward_logits,
    steps_that_fit,
)

FORMATS = ["prm-token", "visualprm"]

# Qwen2-VL-Instruct's own chat template (default system turn, numbered-picture option, video parts).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    return load_model_and_processor(tiny_model_dir)


def _image(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _traces() -> list[dict]:
    return [
        {
            "id": "a",
            "prompt": "<image>\nWhat colour is the circle?",
            "steps": ["The circle is red.", "2 + 2 = 4, so the answer is A."],
            "images": [_image((255, 0, 0))],
            "labels": [True, False],
        },
        {
            "id": "b",
            "prompt": "<image1> <image2> How many squares?",
            "steps": ["  one square on the left  ", "two on the right", "three in all"],
            "images": [_image((0, 255, 0)), _image((0, 0, 255), (96, 64))],
            "labels": [0.75, 0.5, 0.0],
        },
    ]


def _decode(processor, batch, row: int) -> str:
    length = int(batch["attention_mask"][row].sum())
    return processor.tokenizer.decode(batch["input_ids"][row, :length])


def test_prm_token_layout(tiny) -> None:
    _, processor = tiny
    batch = encode_traces(processor, "prm-token", _traces())
    text = _decode(processor, batch, 1)
    vision = "<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>"
    # the 96x64 image is resized to 56x28 -> 2x4 patches -> 2 merged tokens
    vision_small = "<|vision_start|>" + "<|image_pad|>" * 2 + "<|vision_end|>"
    assert text == (
        f"<|im_start|>user\n{vision}{vision_small}Question: How many squares?\n"
        "Process: one square on the left<prm>\n\ntwo on the right<prm>\n\nthree in all<prm><|im_end|>\n"
    )
    marker = processor.tokenizer.convert_tokens_to_ids("<prm>")
    for row, n in enumerate([2, 3]):
        positions = batch["step_positions"][row]
        assert batch["n_steps"][row] == n
        assert positions[:n].tolist() == (batch["input_ids"][row] == marker).nonzero().flatten().tolist()
        assert (positions[n:] == -1).all()
    assert batch["image_grid_thw"].shape[0] == 3  # all images of the batch in one processor call
    assert reward_token_ids(processor, "prm-token") == tuple(
        processor.tokenizer.convert_tokens_to_ids(["Yes", "No"])
    )


def test_visualprm_layout(tiny) -> None:
    _, processor = tiny
    batch = encode_traces(processor, "visualprm", _traces())
    text = _decode(processor, batch, 0)
    fmt = get_step_format("visualprm")
    vision = "<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>"
    assert text == (
        f"<|im_start|>system\n{fmt.system_prompt}<|im_end|>\n"
        f"<|im_start|>user\n{vision}### Question:\nWhat colour is the circle?\n\n### Solution Process:\n"
        "The circle is red.<|im_end|>\n<|im_start|>assistant\n+<|im_end|>\n"
        "<|im_start|>user\n2 + 2 = 4, so the answer is A.<|im_end|>\n<|im_start|>assistant\n+<|im_end|>\n"
    )
    plus = processor.tokenizer.convert_tokens_to_ids("+")
    for row, n in enumerate([2, 3]):
        positions = batch["step_positions"][row, :n]
        # the logits at each position predict the answer slot that follows it
        assert (batch["input_ids"][row, positions + 1] == plus).all()
        assert processor.tokenizer.decode(batch["input_ids"][row, positions]) == "\n" * n
    assert reward_token_ids(processor, "visualprm") == tuple(
        processor.tokenizer.convert_tokens_to_ids(["+", "-"])
    )


@pytest.mark.parametrize("name", FORMATS)
def test_labels_never_change_the_input(tiny, name: str) -> None:
    _, processor = tiny
    with_labels = encode_traces(processor, name, _traces())
    flipped = [dict(trace, labels=[0.0] * len(trace["steps"])) for trace in _traces()]
    without = encode_traces(
        processor, name, [{k: v for k, v in t.items() if k != "labels"} for t in _traces()]
    )
    assert torch.equal(with_labels["input_ids"], encode_traces(processor, name, flipped)["input_ids"])
    assert torch.equal(with_labels["input_ids"], without["input_ids"])
    assert "step_labels" not in without
    assert with_labels["step_labels"].tolist() == [[1.0, 0.0, -100.0], [0.75, 0.5, 0.0]]


@pytest.mark.parametrize("name", FORMATS)
def test_truncation_drops_whole_tail_steps(tiny, name: str) -> None:
    _, processor = tiny
    trace = _traces()[1]
    full = encode_traces(processor, name, [trace])
    full_length = int(full["attention_mask"].sum())
    two_steps = encode_traces(
        processor, name, [dict(trace, steps=trace["steps"][:2], labels=trace["labels"][:2])]
    )
    two_length = int(two_steps["attention_mask"].sum())
    assert two_length < full_length
    for max_length in (two_length, full_length - 1):
        cut = encode_traces(processor, name, [trace], max_length=max_length)
        assert cut["n_steps"] == [2]
        assert torch.equal(cut["input_ids"], two_steps["input_ids"])
        assert cut["step_positions"].tolist() == two_steps["step_positions"].tolist()
        assert cut["step_labels"].tolist() == [[0.75, 0.5]]
    assert encode_traces(processor, name, [trace], max_length=full_length)["n_steps"] == [3]
    one_length = int(
        encode_traces(processor, name, [dict(trace, steps=trace["steps"][:1], labels=[1.0])])[
            "attention_mask"
        ].sum()
    )
    assert steps_that_fit(processor, name, [trace, _traces()[0]], max_length=one_length) == [1, 1]
    assert steps_that_fit(processor, name, [trace], max_length=one_length - 1) == [0]
    # a trace that does not fit at all is flagged (n_steps 0) and becomes a blank row without images
    mixed = encode_traces(processor, name, [trace, _traces()[0]], max_length=one_length - 1)
    fitting = steps_that_fit(processor, name, [_traces()[0]], max_length=one_length - 1)[0]
    assert fitting >= 1
    assert mixed["n_steps"] == [0, fitting]
    assert (mixed["step_positions"][0] == -1).all()
    assert (mixed["step_labels"][0] == -100.0).all()
    assert mixed["image_grid_thw"].shape[0] == 1  # only the image of the trace that fits
    assert int(mixed["attention_mask"][0].sum()) < one_length
    alone = encode_traces(processor, name, [trace], max_length=one_length - 1)
    assert alone["n_steps"] == [0] and alone["step_positions"].shape == (1, 0)
    assert "image_grid_thw" not in alone or alone["image_grid_thw"] is None


@pytest.mark.parametrize("name", FORMATS)
def test_trace_without_images_and_long_unicode_steps(tiny, name: str) -> None:
    _, processor = tiny
    trace = {"prompt": "Σ of 数字?", "steps": ["x² + y² = 1 😀", "Yes. No. + -"], "images": []}
    batch = encode_traces(processor, name, [trace])
    assert "pixel_values" not in batch or batch["pixel_values"] is None
    assert batch["n_steps"] == [2]
    assert "x² + y² = 1 😀" in _decode(processor, batch, 0)


@pytest.mark.parametrize(
    ("trace", "message"),
    [
        ({"prompt": "q", "steps": []}, r"trace 0: field 'steps' must be a non-empty list"),
        ({"prompt": "q", "steps": ["ok", "  "]}, r"field 'steps\[1\]' is empty"),
        ({"prompt": None, "steps": ["ok"]}, "field 'prompt' is not a string"),
        ({"prompt": "q", "steps": ["ok"], "images": ["/no/such.png"]}, "cannot read image '/no/such.png'"),
        ({"prompt": "q", "steps": ["a <prm> b"]}, r"field 'steps\[0\]' holds the special token '<prm>'"),
        (
            {"prompt": "q <|image_pad|>", "steps": ["a"]},
            "field 'prompt' holds the special token '<|image_pad|>'",
        ),
        ({"prompt": "q", "steps": ["a", "b<|im_start|>assistant"]}, r"'steps\[1\]' holds the special token"),
        ({"prompt": "q", "steps": ["a", "b"], "labels": [True]}, "1 labels for 2 steps"),
    ],
)
def test_bad_traces_are_one_line_errors(tiny, trace: dict, message: str) -> None:
    _, processor = tiny
    with pytest.raises(MPRMError, match=message):
        encode_traces(processor, "prm-token", [trace])


def test_unknown_format() -> None:
    with pytest.raises(MPRMError, match="unknown step format 'nope'"):
        get_step_format("nope")


@pytest.mark.parametrize("name", FORMATS)
def test_step_reward_logits_pick_the_marker_rows(tiny, name: str) -> None:
    model, processor = tiny
    batch = encode_traces(processor, name, _traces())
    reward_ids = reward_token_ids(processor, name)
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
        pairs = step_reward_logits(logits, batch["step_positions"], reward_ids)
        kept_rows_only = forward_step_reward_logits(model, batch, reward_ids)
    assert pairs.shape == (2, 3, 2)
    position = int(batch["step_positions"][1, 2])
    assert torch.equal(pairs[1, 2], logits[1, position, list(reward_ids)])
    assert (pairs[0, 2] == 0).all()  # padded step
    assert torch.allclose(pairs, kept_rows_only, atol=1e-5)


def test_prepare_adds_missing_marker_and_reward_tokens(tiny_model_dir: Path) -> None:
    model, processor = load_model_and_processor(tiny_model_dir)
    fmt = get_step_format("prm-token")
    custom = type(fmt)(name="custom", positive_token="Correct", negative_token="Wrong", marker_token="<step>")
    with pytest.raises(MPRMError, match="prepare_model_and_processor"):
        reward_token_ids(processor, custom)
    rows = model.get_input_embeddings().weight.shape[0]
    prepare_model_and_processor(model, processor, custom)
    assert len(processor.tokenizer.encode("<step>", add_special_tokens=False)) == 1
    positive, negative = reward_token_ids(processor, custom)
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer) > rows
    batch = encode_traces(processor, custom, [{"prompt": "q", "steps": ["s1", "s2"], "images": []}])
    assert batch["n_steps"] == [2]
    # already prepared: nothing changes
    before = len(processor.tokenizer)
    prepare_model_and_processor(model, processor, "prm-token")
    assert len(processor.tokenizer) == before and positive != negative


@pytest.mark.parametrize("name", FORMATS)
def test_formats_work_with_qwen2_vl_instruct_chat_template(tiny_model_dir: Path, name: str) -> None:
    """Real checkpoints bring their own template: the reward positions are found from it, not assumed."""
    model, processor = load_model_and_processor(tiny_model_dir)
    processor.chat_template = QWEN2_VL_CHAT_TEMPLATE
    batch = encode_traces(processor, name, _traces())
    text = _decode(processor, batch, 0)
    if name == "prm-token":
        assert text.startswith(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        )
        assert text.endswith("2 + 2 = 4, so the answer is A.<prm><|im_end|>\n")
    else:
        assert text.startswith(f"<|im_start|>system\n{get_step_format(name).system_prompt}<|im_end|>\n")
        assert text.count("<|im_start|>assistant\n+<|im_end|>") == 2
    assert batch["n_steps"] == [2, 3]
    positive = reward_token_ids(processor, name)[0]
    for row, n in enumerate(batch["n_steps"]):
        positions = batch["step_positions"][row, :n]
        following = batch["input_ids"][row, positions + 1]
        if name == "visualprm":
            assert (following == positive).all()
        else:
            assert (
                batch["input_ids"][row, positions] == processor.tokenizer.convert_tokens_to_ids("<prm>")
            ).all()
    with torch.no_grad():
        pairs = forward_step_reward_logits(model, batch, reward_token_ids(processor, name))
    assert torch.isfinite(pairs).all()
