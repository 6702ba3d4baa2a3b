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


TINTS = {(250, 226, 226): 0, (226, 246, 226): 1, (226, 232, 252): 2, (248, 242, 214): 3}


def decode_picture(path: Path) -> dict[str, tuple[str, str] | None]:
    """position -> (colour, shape) or None, read from pixels: the centre gives the colour, a few probe
    points the shape; every cell's corner shows its position's tint."""
    pixels = Image.open(path).convert("RGB").load()
    cells: dict[str, tuple[str, str] | None] = {}
    for index, position in enumerate(POSITIONS):
        x, y = (index % 2) * 28, (index // 2) * 28
        assert TINTS[pixels[x + 1, y + 1]] == index
        centre = pixels[x + 14, y + 14]
        if centre not in PIXEL_COLOURS:
            cells[position] = None
            continue
        if pixels[x + 6, y + 6] == centre:
            shape = "square"
        elif pixels[x + 7, y + 21] == centre:
            shape = "triangle"
        elif pixels[x + 9, y + 9] == centre:
            shape = "circle"
        else:
            shape = "diamond"
        cells[position] = (PIXEL_COLOURS[centre], shape)
    return cells


POS = "(top left|top right|bottom left|bottom right)"
COL = "(red|green|blue|yellow)"
SHP = "(circle|square|triangle|diamond)"
NUM = "(no|one|two|three|four)"
NUMBERS = {"no": 0, "one": 1, "two": 2, "three": 3, "four": 4}
CLAIMS = [
    (re.compile(rf"there (?:is|are) {NUM} {COL} shapes?\b"), "count"),
    (re.compile(rf"(?:there is|the image contains) a {COL} {SHP}\b"), "present"),
    (re.compile(rf"(?:there is no|the image has no) {COL} {SHP}\b"), "absent"),
    (re.compile(rf"(?:the image shows a|a) {SHP}(?: is drawn in the grid)?\b(?!.* cell)"), "shape_present"),
    (re.compile(rf"(?:the image shows no|no) {SHP}\b"), "shape_absent"),
    (re.compile(rf"the {SHP} (?:is|sits) in the {POS} cell"), "place"),
    (re.compile(rf"the {POS} cell holds the {SHP}"), "place_reversed"),
    (re.compile(rf"the (?:colour of the )?{SHP} is (?:drawn in )?{COL}\b"), "colour"),
]
SIDE = re.compile(r"in the (left|right) image ")
FINAL = re.compile(r"so the answer is (.+)\.$")


def count(cells, colour=None, shape=None) -> int:
    return sum(
        1
        for cell in cells.values()
        if cell and (colour is None or cell[0] == colour) and (shape is None or cell[1] == shape)
    )


def where(cells, shape: str) -> str | None:
    return next((p for p, cell in cells.items() if cell and cell[1] == shape), None)


def claim_truth(step: str, pictures: list[dict]) -> bool | None:
    """True / False for a step's claim against the picture(s); None when the step makes no claim."""
    side = SIDE.search(step)
    cells = pictures[("left", "right").index(side.group(1))] if side else pictures[0]
    for pattern, kind in CLAIMS:
        match = pattern.search(step)
        if not match:
            continue
        g = match.groups()
        if kind == "count":
            return count(cells, colour=g[1]) == NUMBERS[g[0]]
        if kind in {"present", "absent"}:
            return ((g[0], g[1]) in cells.values()) == (kind == "present")
        if kind in {"shape_present", "shape_absent"}:
            return (where(cells, g[0]) is not None) == (kind == "shape_present")
        if kind == "place":
            return where(cells, g[0]) == g[1]
        if kind == "place_reversed":
            return where(cells, g[1]) == g[0]
        position = where(cells, g[0])
        return position is not None and cells[position][0] == g[1]
    return None


def expected_answer(question: str, pictures: list[dict]) -> str:
    cells = pictures[0]
    if m := re.search(rf"How many {COL} shapes", question):
        return str(count(cells, colour=m.group(1)))
    if "How many shapes" in question:
        return str(count(cells))
    if m := re.search(rf"What colour is the {SHP}\?\nChoices:\n(.*)", question, re.S):
        options = dict(re.findall(r"\(([A-D])\) (\w+)", m.group(2)))
        colour = cells[where(cells, m.group(1))][0]
        return next(letter for letter, option in options.items() if option == colour)
    if m := re.search(rf"What colour is the {SHP}\?", question):
        return cells[where(cells, m.group(1))][0]
    if m := re.search(rf"In which cell is the {SHP}\?", question):
        return where(cells, m.group(1))
    if m := re.search(rf"Is there a {COL} {SHP} in the image\?", question):
        return "yes" if (m.group(1), m.group(2)) in cells.values() else "no"
    if "left image has more shapes than the right image" in question:
        return "yes" if count(pictures[0]) > count(pictures[1]) else "no"
    raise AssertionError(f"unparsed question {question!r}")


def final_truth(step: str, answer: str, pictures: list[dict]) -> bool:
    """A final step states an answer after the claim that leads to it: both are right, or both wrong."""
    stated = FINAL.search(step).group(1)
    claim = claim_truth(step, pictures)
    if claim is not None:
        assert claim == (stated == answer), step
    return stated == answer


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
            if FINAL.search(step):
                assert final_truth(step, record["answer"], pictures) == (label == 1), step
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
                if FINAL.search(step["step"]):
                    truth = final_truth(step["step"], record["answer"], pictures)
                else:
                    truth = claim_truth(step["step"], pictures)
                    if truth is None:  # a restatement of the question: no claim, no error
                        assert step["step"].startswith(
                            ("The question asks", "We read", "We check", "Let us", "The grid has")
                        ), step["step"]
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
        # steps are short templated sentences, not padded to the real word counts
        words = np.array([len(step.split()) for steps in sim.steps for step in steps])
        assert 5 <= words.mean() <= 16 and words.max() <= 40


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


# ---- the noise model's knobs, the truth sidecar, the report --------------------------------------------


def _statistics(**knobs) -> dict:
    from mprm_hf.data.synthetic import NoiseModel, truth_statistics

    noise = NoiseModel(**knobs)
    sims = [
        simulate_source(source, count, seed=0, noise=noise)
        for source, count in allocate_rollouts(3000).items()
    ]
    lengths = np.concatenate([np.diff(s.offsets) for s in sims])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    truth = np.concatenate([s.truth for s in sims])
    mc = np.concatenate([s.mc_correct for s in sims])
    return {**truth_statistics(truth, mc, offsets), "pseudo": int((~truth & (mc > 0)).sum())}


def test_each_knob_moves_its_own_statistic() -> None:
    base = _statistics()
    assert (
        _statistics(pseudo_positive=0.0)["pseudo"] < base["pseudo"] / 3
    )  # only final/pre-error luck remains
    assert _statistics(pseudo_positive=0.6)["pseudo"] > 2 * base["pseudo"]
    assert _statistics(false_negative_after_error=0.0)["false_negative_rate"] < base["false_negative_rate"]
    assert _statistics(redundancy=0.8)["rollouts"]["all_positive"] > base["rollouts"]["all_positive"] + 0.1
    assert _statistics(error_rate=0.9)["false_steps"] > 2 * base["false_steps"]


def test_truth_sidecar_and_summary(synthetic_dir: Path) -> None:
    from mprm_hf.data.synthetic import load_truth
    from mprm_hf.data.visualprm400k import load_visualprm400k

    truth = load_truth(synthetic_dir)
    rollouts, _ = load_visualprm400k(synthetic_dir)
    assert set(truth) == set(rollouts["id"])
    first = rollouts[0]
    assert len(truth[first["id"]]) == len(first["steps"])
    summary = orjson.loads((synthetic_dir / "synth.json").read_bytes())
    assert summary["noise"]["pseudo_positive"] == 0.15 and 0.5 < summary["truth"]["mc_truth_agreement"] <= 1.0
    assert set(summary["truth"]["rollouts"]) == {"mixed", "all_positive", "all_negative"}
    # the loaders never read the sidecar: annotations/ is all they see
    assert not any(path.parent.name == "annotations" for path in (synthetic_dir / "truth").rglob("*"))


def test_cli_noise_flags_and_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "noise.yaml"
    config.write_text("pseudo_positive: 0.0\nrecovered_range: [0.1, 0.2]\n")
    argv = [
        "synth",
        "--out",
        str(tmp_path / "w"),
        "--rollouts",
        "100",
        "--benchmark-traces",
        "5",
        "--no-images",
    ]
    assert cli_main([*argv, "--noise", str(config), "--redundancy", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "pseudo-positives (false among MC > 0) by MC:" in printed and "MC label vs truth:" in printed
    noise = orjson.loads((tmp_path / "w" / "synth.json").read_bytes())["noise"]
    assert (
        noise["pseudo_positive"] == 0.0
        and noise["redundancy"] == 0.5
        and noise["recovered_range"] == [0.1, 0.2]
    )
    config.write_text("pseudo_positives: 0.1\n")
    assert cli_main([*argv, "--noise", str(config)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "unknown noise field 'pseudo_positives'" in error
    assert cli_main([*argv, "--error-rate", "1.5"]) == 1
    assert "must be in [0, 1]" in capsys.readouterr().err
    config.write_text("redundancy: lots\n")
    assert cli_main([*argv, "--noise", str(config)]) == 1
    assert "noise field 'redundancy' must be a number" in capsys.readouterr().err
    config.write_text("recovered_range: [0.1]\n")
    assert cli_main([*argv, "--noise", str(config)]) == 1
    assert "noise field 'recovered_range' takes 2 numbers" in capsys.readouterr().err
