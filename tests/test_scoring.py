"""Scoring API and `mprm-hf score`: probabilities, batching, order, and agreement with training's inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mprm_hf.cli import main as cli_main
from mprm_hf.errors import MPRMError
from mprm_hf.modeling import load_model_and_processor
from mprm_hf.scoring import read_steps_file, score_steps, score_traces
from mprm_hf.step_format import encode_traces, get_step_format

FORMATS = ["prm-token", "visualprm"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    return load_model_and_processor(tiny_model_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for index, (colour, size) in enumerate(
        [((255, 0, 0), (64, 64)), ((0, 128, 255), (80, 48)), ((9, 9, 9), (32, 32))]
    ):
        path = folder / f"img{index}.png"
        Image.new("RGB", size, colour).save(path)
        paths.append(path)
    return paths


def _traces(images: list[Path]) -> list[dict]:
    return [
        {"question": "What colour is the circle?", "steps": ["It is red.", "So A."], "images": [images[0]]},
        {
            "question": "How many?",
            "steps": ["one", "two", "three", "so three"],
            "images": [images[1], images[2]],
        },
        {"question": "Σ x² for x in 1..3?", "steps": ["1 + 4 + 9 = 14."], "images": []},
        {
            "question": "Left or right?",
            "steps": ["The star is on the left.", "Answer: left."],
            "images": [images[2]],
        },
    ]


@pytest.mark.parametrize("name", FORMATS)
def test_batched_scores_equal_one_at_a_time_in_input_order(tiny, images: list[Path], name: str) -> None:
    model, processor = tiny
    traces = _traces(images)
    batched = score_traces(model, processor, traces, batch_size=3, step_format=name, progress=False)
    assert [len(scores) for scores in batched] == [2, 4, 1, 2]
    for trace, scores in zip(traces, batched, strict=True):
        alone = score_steps(
            model, processor, trace["images"], trace["question"], trace["steps"], step_format=name
        )
        assert alone == pytest.approx(scores, abs=1e-5)
        assert all(0.0 < score < 1.0 for score in scores)
    reversed_scores = score_traces(
        model, processor, traces[::-1], batch_size=2, step_format=name, progress=False
    )
    for again, scores in zip(reversed_scores[::-1], batched, strict=True):
        assert again == pytest.approx(scores, abs=1e-5)
    # the reward is the softmax over the two reward logits: a random model does not give a constant
    assert len({round(score, 6) for scores in batched for score in scores}) > 1


def test_qwen2_5_vl_scores_batched_like_one_at_a_time(images: list[Path]) -> None:
    from mprm_hf.modeling import create_tiny_model

    model, processor = create_tiny_model(arch="qwen2_5_vl", seed=0)
    traces = _traces(images)
    batched = score_traces(model, processor, traces, batch_size=4, step_format="visualprm", progress=False)
    for trace, scores in zip(traces, batched, strict=True):
        alone = score_steps(
            model, processor, trace["images"], trace["question"], trace["steps"], step_format="visualprm"
        )
        assert alone == pytest.approx(scores, abs=1e-5)


def test_score_steps_accepts_one_image_or_none(tiny, images: list[Path]) -> None:
    model, processor = tiny
    one = score_steps(model, processor, images[0], "What colour?", ["Red."])
    listed = score_steps(model, processor, [Image.open(images[0])], "What colour?", ["Red."])
    assert one == pytest.approx(listed, abs=1e-6)
    assert len(score_steps(model, processor, None, "No picture here.", ["a", "b"])) == 2


@pytest.mark.parametrize("name", FORMATS)
def test_scoring_feeds_the_model_the_ids_training_builds(tiny, images: list[Path], name: str) -> None:
    """Training (the PRMTrainer's collator on a stepwise record) and scoring build the same tokens."""
    from mprm_hf.prm_trainer import PRMDataCollator

    model, processor = tiny
    record = {
        "id": "geo:1",
        "source": "geo",
        "images": [str(images[1]), str(images[0])],
        "prompt": "<image>\nHow many shapes are there?",
        "completions": ["There are two circles.", "And one square.", "So the answer is 3."],
        "labels": [True, False, False],
        "mc_scores": [0.5, 0.0, 0.0],
    }
    collator = PRMDataCollator(processor=processor, step_format=get_step_format(name))
    training = collator([record])
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].clone()), with_kwargs=True
    )
    try:
        score_steps(
            model, processor, record["images"], record["prompt"], record["completions"], step_format=name
        )
    finally:
        hook.remove()
    assert len(seen) == 1
    assert torch.equal(seen[0], training["input_ids"])
    direct = encode_traces(
        processor,
        name,
        [
            {
                "prompt": record["prompt"],
                "steps": record["completions"],
                "images": [Image.open(p) for p in record["images"]],
            }
        ],
    )
    assert torch.equal(direct["step_positions"], training["step_positions"])


def test_bad_traces_name_their_input_index(tiny, images: list[Path]) -> None:
    model, processor = tiny
    traces = _traces(images)
    traces[2] = {**traces[2], "steps": ["fine", ""]}
    with pytest.raises(MPRMError, match=r"^trace 2: field 'steps\[1\]' is empty"):
        score_traces(model, processor, traces, batch_size=2, progress=False)
    with pytest.raises(MPRMError, match=r"^trace 0 \(id 'x'\): field 'steps' must be a non-empty list"):
        score_traces(model, processor, [{"id": "x", "question": "q", "steps": []}], progress=False)
    with pytest.raises(MPRMError, match="unknown step format"):
        score_steps(model, processor, None, "q", ["a"], step_format="nope")


def test_read_steps_file_blocks_and_json(tmp_path: Path) -> None:
    blocks = tmp_path / "steps.txt"
    blocks.write_text("\n\nFirst step,\nstill first.\n\n\nSecond step.\n", encoding="utf-8")
    assert read_steps_file(blocks) == ["First step,\nstill first.", "Second step."]
    listed = tmp_path / "steps.json"
    listed.write_text(json.dumps(["a", " b "]), encoding="utf-8")
    assert read_steps_file(listed) == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("\n \n", "no steps"),
        ("[1, 2]", "must hold a list of strings"),
        ('["a", "  "]', "step 2 is empty"),
        ('["a",\n  oops]', r"steps.txt:2: not valid JSON"),
    ],
)
def test_read_steps_file_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "steps.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MPRMError, match=message):
        read_steps_file(path)


@pytest.mark.parametrize("name", FORMATS)
def test_cli_score_prints_every_step(
    tiny_model_dir: Path, tiny, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture, name: str
) -> None:
    model, processor = tiny
    steps = ["The circle is red.", "The square is blue.", "So the answer is B."]
    path = tmp_path / "steps.txt"
    path.write_text("\n\n".join(steps), encoding="utf-8")
    argv = ["score", "--model", str(tiny_model_dir), "--image", str(images[0]), "--image", str(images[1])]
    argv += [
        "--question",
        "Which shape is blue?",
        "--steps",
        str(path),
        "--step-format",
        name,
        "--device",
        "cpu",
    ]
    assert cli_main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = score_steps(model, processor, images[:2], "Which shape is blue?", steps, step_format=name)
    assert len(lines) == 3
    for number, (line, step, reward) in enumerate(zip(lines, steps, expected, strict=True), start=1):
        assert line == f"step {number:>2}  reward {reward:.4f}  {step}"
    assert cli_main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [row["step"] for row in printed] == steps
    assert [row["reward"] for row in printed] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image", "/no/such/image.png"], "--image /no/such/image.png: file not found"),
        (["--steps", "/no/such/steps.txt"], "/no/such/steps.txt: steps file not found"),
        (["--model", "./no/such/model"], "./no/such/model: model folder not found"),
        (["--question", "  "], "--question is empty"),
    ],
)
def test_cli_score_errors_are_one_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    steps = tmp_path / "steps.txt"
    steps.write_text("one step", encoding="utf-8")
    argv = ["score", "--model", str(tiny_model_dir), "--question", "q?", "--steps", str(steps), *extra]
    assert cli_main(argv) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert message in error


def test_a_saved_prm_scores_with_the_step_format_it_was_trained_with(
    tiny_model_dir: Path, images: list[Path], tmp_path: Path
) -> None:
    from mprm_hf.step_format import prepare_model_and_processor

    model, processor = load_model_and_processor(tiny_model_dir)
    prepare_model_and_processor(model, processor, "visualprm")  # what PRMTrainer does before training
    model.save_pretrained(tmp_path / "prm")
    processor.save_pretrained(tmp_path / "prm")
    saved = json.loads((tmp_path / "prm" / "config.json").read_text())
    assert saved["prm_step_format"] == "visualprm"

    prm, prm_processor = load_model_and_processor(tmp_path / "prm")
    steps = ["There is a red square.", "So the answer is 1."]
    default = score_steps(prm, prm_processor, [images[0]], "How many squares?", steps)
    visualprm = score_steps(
        prm, prm_processor, [images[0]], "How many squares?", steps, step_format="visualprm"
    )
    assert default == visualprm
    with pytest.warns(UserWarning, match="trained with 'visualprm'"):
        prm_token = score_steps(
            prm, prm_processor, [images[0]], "How many squares?", steps, step_format="prm-token"
        )
    assert prm_token != visualprm
