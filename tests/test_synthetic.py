"""The synthetic world: real layouts, claims that are true or false in the drawn pictures, MC noise as in
the real data, determinism, and the `mprm-hf synth` command."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

from mprm_hf.cli import main as cli_main
from mprm_hf.data.synthetic import (
    allocate_rollouts,
    sample_texts,
    simulate_source,
    write_synthetic,
)
from mprm_hf.data.synthetic_sources import SOURCE_SHAPES

BENCHMARK_SOURCES = {"MMMU_DEV_VAL", "MathVision_MINI", "MathVerse_MINI_Vision_Only", "DynaMath", "WeMath"}

# ---- reading a picture back from its pixels (independent of the generator's scene objects) ----------

PIXEL_COLOURS = {
    (220, 40, 40): "red",
    (40, 170, 60): "green",
    (40, 80, 220): "blue",
    (230, 200, 30): "yellow",
}
POSITIONS = ("top left", "top right", "bottom left", "bottom right")


def decode_picture(path: Path) -> dict[str, tuple[str, str] | None]:
    """position -> (colour, shape) or None, read from pixels: centre gives colour, corners give shape."""
    pixels = Image.open(path).convert("RGB").load()
    cells: dict[str, tuple[str, str] | None] = {}
    for index, position in enumerate(POSITIONS):
        x, y = (index % 2) * 28, (index // 2) * 28
        centre = pixels[x + 14, y + 14]
        if centre not in PIXEL_COLOURS:
            cells[position] = None
            continue
        if pixels[x + 6, y + 6] == centre:
            shape = "square"
        elif pixels[x + 7, y + 21] == centre:
            shape = "triangle"
        else:
            shape = "circle"
        cells[position] = (PIXEL_COLOURS[centre], shape)
    return cells


POS = "(top left|top right|bottom left|bottom right)"
COL = "(red|green|blue|yellow)"
SHP = "(circle|square|triangle)"
CLAIMS = [
    (re.compile(rf"the shape in the {POS} is {COL}\b"), "colour_at"),
    (re.compile(rf"the shape in the {POS} is a {SHP}\b"), "shape_at"),
    (re.compile(rf"the {POS} cell is (empty|not empty)\b"), "occupancy"),
    (re.compile(rf"there is a {COL} {SHP} in the {POS}\b"), "there_is"),
    (re.compile(rf"the number of (?:{COL} shapes|{SHP}s|shapes) is (\d)\b"), "count"),
]
SIDE = re.compile(r"in the (left|right) image ")
FINAL = re.compile(r"[Ss]o the answer is (\S+)\.$")


def count(cells, colour=None, shape=None) -> int:
    return sum(
        1
        for cell in cells.values()
        if cell and (colour is None or cell[0] == colour) and (shape is None or cell[1] == shape)
    )


def claim_truth(step: str, pictures: list[dict]) -> bool | None:
    """True / False for a step's claim against the picture(s); None when the step makes no claim."""
    side = SIDE.search(step)
    cells = pictures[("left", "right").index(side.group(1))] if side else pictures[0]
    for pattern, kind in CLAIMS:
        match = pattern.search(step)
        if not match:
            continue
        groups = match.groups()
        if kind == "colour_at":
            return cells[groups[0]] is not None and cells[groups[0]][0] == groups[1]
        if kind == "shape_at":
            return cells[groups[0]] is not None and cells[groups[0]][1] == groups[1]
        if kind == "occupancy":
            return (cells[groups[0]] is None) == (groups[1] == "empty")
        if kind == "there_is":
            return cells[groups[2]] == (groups[0], groups[1])
        return count(cells, colour=groups[0], shape=groups[1]) == int(groups[2])
    return None


def expected_answer(question: str, pictures: list[dict]) -> str:
    cells = pictures[0]
    if m := re.search(rf"How many {COL} shapes", question):
        return str(count(cells, colour=m.group(1)))
    if m := re.search(rf"How many {SHP}s", question):
        return str(count(cells, shape=m.group(1)))
    if "How many shapes" in question:
        return str(count(cells))
    if m := re.search(rf"What colour is the shape in the {POS}\?\nChoices:\n(.*)", question, re.S):
        options = dict(re.findall(r"\(([A-D])\) (\w+)", m.group(2)))
        return next(letter for letter, colour in options.items() if colour == cells[m.group(1)][0])
    if m := re.search(rf"What colour is the shape in the {POS}\?", question):
        return cells[m.group(1)][0]
    if m := re.search(rf"What shape is in the {POS}\?", question):
        return cells[m.group(1)][1]
    if m := re.search(rf"Is there a {COL} {SHP} in the image\?", question):
        return "yes" if (m.group(1), m.group(2)) in cells.values() else "no"
    if "left image has more shapes than the right image" in question:
        return "yes" if count(pictures[0]) > count(pictures[1]) else "no"
    raise AssertionError(f"unparsed question {question!r}")


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# ---- layouts -------------------------------------------------------------------------------------------


def test_annotation_layout_and_schema(synthetic_dir: Path) -> None:
    files = sorted((synthetic_dir / "annotations").glob("*.jsonl"))
    assert [f.stem for f in files] == sorted(SOURCE_SHAPES)
    total = 0
    for file in files:
        records = read_jsonl(file)
        assert records, file
        total += len(records)
        for record in records:
            assert set(record) == {
                "image",
                "question",
                "question_orig",
                "answer",
                "response",
                "steps_with_score",
                "num_mc_sequences",
            }
            images = record["image"] if isinstance(record["image"], list) else [record["image"]]
            assert isinstance(record["image"], list) == (file.stem == "nlvr2_en_20240910")
            assert len(images) == (2 if file.stem == "nlvr2_en_20240910" else 1)
            for image in images:
                assert image.startswith(f"VisualPRM400K-v1.1-Raw/{file.stem}/") and image.endswith(".png")
                assert (synthetic_dir / image).is_file()
            assert record["question"].count("<image>") == len(images)
            assert record["question_orig"] in record["question"] and "<image>" not in record["question_orig"]
            steps = record["steps_with_score"]
            assert 2 <= len(steps) <= 16 and record["num_mc_sequences"] == 16
            assert record["response"] == "\n\n".join(s["step"] for s in steps)
            for step in steps:
                assert step["num_mc_total"] == 16 and 0 <= step["num_mc_correct"] <= 16
                assert step["score"] == step["num_mc_correct"] / 16
                assert step["step"] and "\n\n" not in step["step"]
    assert total == 600


def test_benchmark_layout_and_labels(synthetic_dir: Path) -> None:
    root = synthetic_dir / "VisualProcessBench"
    records = read_jsonl(root / "test.jsonl")
    assert len(records) == 120
    labels: Counter[int] = Counter()
    for record in records:
        assert set(record) == {"image", "question", "answer", "response", "policy_model", "data_source"}
        assert record["data_source"] in BENCHMARK_SOURCES
        assert record["image"] and all((root / image).is_file() for image in record["image"])
        assert all(image.startswith(f"images/{record['data_source']}/") for image in record["image"])
        steps, correctness = record["response"]["steps"], record["response"]["process_correctness"]
        assert len(steps) == len(correctness) >= 2
        labels.update(correctness)
    assert set(labels) == {1, 0, -1}
    assert {r["data_source"] for r in records} == BENCHMARK_SOURCES
    # one record in about a hundred names an image it does not supply, as in the real benchmark
    tags = [len(set(re.findall(r"<image\d+>", r["question"]))) - len(r["image"]) for r in records]
    assert sum(1 for t in tags if t > 0) == 1


# ---- the truth lives in the pictures ---------------------------------------------------------------------


def test_benchmark_labels_are_the_truth_of_the_drawn_pictures(synthetic_dir: Path) -> None:
    root = synthetic_dir / "VisualProcessBench"
    checked = Counter()
    for record in read_jsonl(root / "test.jsonl"):
        pictures = [decode_picture(root / image) for image in record["image"]]
        assert record["answer"] == expected_answer(record["question"], pictures)
        for step, label in zip(
            record["response"]["steps"], record["response"]["process_correctness"], strict=True
        ):
            if final := FINAL.search(step):
                assert (final.group(1) == record["answer"]) == (label == 1), step
            elif label == 0:
                assert claim_truth(step, pictures) is None, step
            else:
                assert claim_truth(step, pictures) == (label == 1), step
            checked[label] += 1
    assert checked[1] > 0 and checked[-1] > 0 and checked[0] > 0


def test_corpus_claims_against_pictures_and_mc(synthetic_dir: Path) -> None:
    """Claims are checked against the pixels; false ones are about 10% and mostly get MC = 0."""
    truths, mc = [], []
    for file in sorted((synthetic_dir / "annotations").glob("*.jsonl")):
        for record in read_jsonl(file):
            images = record["image"] if isinstance(record["image"], list) else [record["image"]]
            pictures = [decode_picture(synthetic_dir / image) for image in images]
            assert record["answer"] == expected_answer(record["question_orig"], pictures)
            for step in record["steps_with_score"]:
                if final := FINAL.search(step["step"]):
                    truth = final.group(1) == record["answer"]
                else:
                    truth = claim_truth(step["step"], pictures)
                    if truth is None:  # a restatement of the question: no claim, no error
                        assert step["step"].startswith(
                            ("The question asks", "We read", "We restate", "Let us")
                        )
                        continue
                truths.append(truth)
                mc.append(step["num_mc_correct"])
    truths_arr, mc_arr = np.array(truths), np.array(mc)
    assert 0.06 < (~truths_arr).mean() < 0.15
    assert (mc_arr[~truths_arr] == 0).mean() > 0.8
    assert (mc_arr[truths_arr] > 0).mean() > 0.85


# ---- label noise -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated() -> list:
    return [simulate_source(source, count, seed=0) for source, count in allocate_rollouts(4000).items()]


def test_label_noise_statistics(simulated: list) -> None:
    truth = np.concatenate([s.truth for s in simulated])
    mc = np.concatenate([s.mc_correct for s in simulated])
    assert 0.07 < (~truth).mean() < 0.13  # about 10% of steps incorrect

    # pseudo-positives: false steps with MC > 0 exist, and their MC is low
    pseudo = mc[~truth & (mc > 0)]
    assert 0.02 < len(pseudo) / (~truth).sum() < 0.2
    assert np.median(pseudo) <= 3 and (pseudo <= 3).mean() > 0.8
    # false negatives: true steps with MC = 0 exist
    assert 0.01 < (truth & (mc == 0)).sum() / truth.sum() < 0.15

    after_first_error, false_negative_after, false_negative_before = [], 0, 0
    shapes: Counter[str] = Counter()
    for sim in simulated:
        for i in range(len(sim.steps)):
            part = sim.rollout_slice(i)
            t, m = sim.truth[part], sim.mc_correct[part]
            wrong = np.flatnonzero(~t)
            if len(wrong):
                later = m[wrong[0] + 1 :]
                after_first_error.extend(later.tolist())
                false_negative_after += int((t[wrong[0] + 1 :] & (later == 0)).sum())
                false_negative_before += int((m[: wrong[0]] == 0).sum())
            else:
                false_negative_before += int((m == 0).sum())
            positives = int((m > 0).sum())
            shapes[
                "all-positive" if positives == len(m) else "all-negative" if positives == 0 else "mixed"
            ] += 1
    after = np.array(after_first_error)
    assert (after == 0).mean() > 0.75  # steps after the first error mostly 0
    assert false_negative_after > 0 and false_negative_before > 0
    rollouts = sum(shapes.values())
    assert shapes["all-positive"] / rollouts > 0.4
    assert shapes["mixed"] / rollouts > 0.1
    assert shapes["all-negative"] / rollouts > 0.01

    # BIS ties: many rollouts share the same MC vector summary (all 16/16, or all 0)
    perfect = sum(
        1 for s in simulated for i in range(len(s.steps)) if (s.mc_correct[s.rollout_slice(i)] == 16).all()
    )
    assert perfect / rollouts > 0.1


def test_sources_follow_real_shapes() -> None:
    for source in ("geos_en_20240402_extracted", "nlvr2_en_20240910", "mavis_function_abs"):
        shape = SOURCE_SHAPES[source]
        sim = simulate_source(source, 1500, seed=1)
        steps_per_rollout = np.diff(sim.offsets)
        assert abs((steps_per_rollout - 1).mean() - shape.body_per_rec) < 0.25
        words = np.mean([len(step.split()) for steps in sim.steps for step in steps])
        assert abs(words - shape.words_per_step) / shape.words_per_step < 0.15


def test_allocation_follows_source_sizes() -> None:
    counts = allocate_rollouts(565_149)
    assert sum(counts.values()) == 565_149 and set(counts) == set(SOURCE_SHAPES)
    assert counts["geos_en_20240402_extracted_open_ended_only"] < counts["geos_en_20240402_extracted"]
    assert min(allocate_rollouts(38).values()) == 1
    assert sum(allocate_rollouts(10).values()) == 10


# ---- determinism ----------------------------------------------------------------------------------------


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = write_synthetic(tmp_path / "a", rollouts=150, benchmark_traces=20, seed=7)
    write_synthetic(tmp_path / "b", rollouts=150, benchmark_traces=20, seed=7)
    write_synthetic(tmp_path / "c", rollouts=150, benchmark_traces=20, seed=8)
    a, b, c = (tree_bytes(tmp_path / name) for name in "abc")
    assert a == b and first["images"] > 0
    assert a.keys() != c.keys() or any(a[key] != c[key] for key in a)
    annotations = [key for key in a if key.startswith("annotations/")]
    assert sum(a[key] != c.get(key) for key in annotations) >= len(annotations) // 2


@pytest.mark.slow
def test_worker_processes_write_the_same_bytes(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "one", rollouts=400, benchmark_traces=10, seed=3, images=False, workers=1)
    write_synthetic(tmp_path / "two", rollouts=400, benchmark_traces=10, seed=3, images=False, workers=2)
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")


def test_without_images_writes_paths_but_no_pictures(tmp_path: Path) -> None:
    summary = write_synthetic(tmp_path, rollouts=80, benchmark_traces=10, seed=0, images=False)
    assert summary["images"] == 0 and summary["benchmark"]["images"] == 0
    assert not any(tmp_path.rglob("*.png"))
    record = read_jsonl(tmp_path / "annotations" / "MathV360K_prompts.jsonl")[0]
    assert record["image"].startswith("VisualPRM400K-v1.1-Raw/MathV360K_prompts/")


def test_zero_rollouts_writes_empty_sources_and_the_benchmark(tmp_path: Path) -> None:
    summary = write_synthetic(tmp_path, rollouts=0, benchmark_traces=4, seed=0)
    files = sorted((tmp_path / "annotations").glob("*.jsonl"))
    assert len(files) == 38 and all(f.read_bytes() == b"" for f in files)
    assert summary["rollouts"] == 0 and len(read_jsonl(tmp_path / "VisualProcessBench" / "test.jsonl")) == 4


def test_rewriting_a_folder_leaves_no_picture_of_the_earlier_run(tmp_path: Path) -> None:
    write_synthetic(tmp_path, rollouts=60, benchmark_traces=5, seed=0, images=True)
    assert any(tmp_path.rglob("*.png"))
    write_synthetic(tmp_path, rollouts=60, benchmark_traces=5, seed=1, images=False)
    assert not any(tmp_path.rglob("*.png"))


# ---- texts for the tokenizer -------------------------------------------------------------------------------


def test_sample_texts_small_vocabulary_and_deterministic() -> None:
    texts = sample_texts(300, seed=0)
    assert len(texts) == 300 and texts == sample_texts(300, seed=0) and texts != sample_texts(300, seed=1)
    words = {w.strip(".,:?()").lower() for text in texts for w in text.split()}
    assert len(words) < 200
    assert any("so the answer is" in t for t in texts) and any("<image>" in t for t in texts)
    assert any(re.search(r"<image\d>", t) or "Choices" in t for t in texts)


# ---- command line -------------------------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "world"
    code = cli_main(
        ["synth", "--out", str(out), "--rollouts", "120", "--benchmark-traces", "15", "--seed", "2"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "wrote 120 rollouts" in printed and "15 VisualProcessBench traces" in printed
    assert sum(len(read_jsonl(f)) for f in (out / "annotations").glob("*.jsonl")) == 120
    assert len(read_jsonl(out / "VisualProcessBench" / "test.jsonl")) == 15
    assert any(out.rglob("*.png"))


@pytest.mark.parametrize(
    ("option", "value"), [("--rollouts", "-5"), ("--benchmark-traces", "-1"), ("--workers", "0")]
)
def test_cli_rejects_bad_sizes_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    assert cli_main(["synth", "--out", str(tmp_path), option, value]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("mprm-hf synth: error:")
    assert option.lstrip("-").split("-")[0] in error
