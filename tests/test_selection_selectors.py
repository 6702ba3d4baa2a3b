"""Scores, selectors and budgets on the synthetic world; the select command's outputs, report and card."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from mprm_hf.errors import MPRMError
from mprm_hf.selection import scores
from mprm_hf.selection.selectors import SELECTORS, select, select_rollouts


@pytest.fixture(scope="module")
def rollouts(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from mprm_hf.data.visualprm400k import load_visualprm400k

    ds, _ = load_visualprm400k(synthetic_dir, cache_dir=tmp_path_factory.mktemp("hf_cache"))
    return ds


# ------------------------------------------------------------------------------------------ scores
def _neumaier(values: list[float]) -> float:
    """CPython 3.12's float sum(), written out: the oracle for the compensated branch."""
    total: float | int = 0
    correction = 0.0
    for index, value in enumerate(values):
        if index == 0:
            total = total + value
            continue
        added = total + value
        correction += (total - added) + value if abs(total) >= abs(value) else (value - added) + total
        total = added
    if correction and math.isfinite(correction):
        total += correction
    return float(total)


def test_python_sum_rows_matches_sum_in_both_modes() -> None:
    rnd = random.Random(0)
    rows = [
        [rnd.choice([0.1, 0.2, 0.3, 0.7, 1e-17, 1e16, 1.0, 0.0625]) for _ in range(rnd.randint(0, 16))]
        for _ in range(3000)
    ]
    width = 16
    matrix = np.zeros((len(rows), width))
    mask = np.zeros((len(rows), width), dtype=bool)
    for index, row in enumerate(rows):
        matrix[index, : len(row)] = row
        mask[index, : len(row)] = True
    naive = scores.python_sum_rows(matrix, mask, compensated=False)
    compensated = scores.python_sum_rows(matrix, mask, compensated=True)
    assert [float(value) for value in naive] == [
        float(sum(row, 0.0)) if row else 0.0 for row in rows
    ] or sys.version_info >= (3, 12)
    assert all(
        a == _neumaier(row) or (not row and a == 0.0)
        for a, row in zip(compensated.tolist(), rows, strict=True)
    )
    here = scores.python_sum_rows(matrix, mask)
    assert here.tolist() == [float(sum(row)) for row in rows]
    assert (naive != compensated).any()  # the two modes really differ on these rows


def test_python_sum_rows_left_to_right_is_exact_to_the_sign_of_zero() -> None:
    """The uncompensated sum adds 0.0 where a row takes nothing: that must change no sum, with
    negative values, signed zeros and overflow to infinity among the rows."""
    rnd = random.Random(1)
    values = [0.1, -0.1, 0.3, -0.0, 0.0, 1e308, -1e308, 5e-324, -2.5]
    matrix = np.array([[rnd.choice(values) for _ in range(12)] for _ in range(2000)])
    mask = np.array([[rnd.random() < 0.6 for _ in range(12)] for _ in range(2000)])
    expected = []
    for row, take in zip(matrix.tolist(), mask.tolist(), strict=True):
        total = 0.0
        for value, taken in zip(row, take, strict=True):
            if taken:
                total += value
        expected.append(repr(total))
    got = scores.python_sum_rows(matrix, mask, compensated=False)
    assert [repr(value) for value in got.tolist()] == expected


def test_score_formulas() -> None:
    n_steps, n_pos, sum_pos = np.array([4, 4, 3, 0]), np.array([2, 0, 3, 0]), np.array([1.5, 0.0, 2.4, 0.0])
    p = scores.p_pos(n_pos, n_steps)
    r = scores.reliability(sum_pos, n_pos)
    assert p[:3].tolist() == [0.5, 0.0, 1.0] and math.isnan(p[3])
    assert r.tolist() == [0.75, 1.0, 2.4 / 3, 1.0]
    assert scores.bis(p, r, 0.05)[:3].tolist() == [(0.25 + 0.05) * 0.75, 0.05, 0.05 * (2.4 / 3)]
    assert scores.binary_entropy(np.array([0.0, 0.5, 1.0])).tolist() == [0.0, 1.0, 0.0]
    entropy = scores.mean_step_entropy([[0.5, 1.0], [], [0.0]])
    assert entropy[0] == 0.5 and math.isnan(entropy[1]) and entropy[2] == 0.0


def test_add_rollout_scores_skips_missing_scores_like_the_reference() -> None:
    import datasets

    ds = datasets.Dataset.from_dict(
        {"source": ["a", "a", "b"], "mc_scores": [[0.5, None, 0.0, 1.0], [None], [0.0, 0.0]]},
        features=datasets.Features(
            {"source": datasets.Value("string"), "mc_scores": datasets.List(datasets.Value("float64"))}
        ),
    )
    out = scores.add_rollout_scores(ds, alpha=0.2)
    assert out["n_steps"] == [3, 0, 2] and out["n_pos"] == [2, 0, 0]
    assert out["reliability"][0] == 0.75 and out["reliability"][2] == 1.0
    assert out["bis"][0] == pytest.approx((2 / 3 * 1 / 3 + 0.2) * 0.75) and out["bis"][2] == 0.2
    assert out.column_names[:2] == ["source", "mc_scores"]


# --------------------------------------------------------------------------------------- selectors
def _per_source_budget(ds, indices, ratio):
    sources = np.asarray(ds["source"])
    counts = {s: int((sources == s).sum()) for s in dict.fromkeys(sources.tolist())}
    kept = np.asarray(sources[indices])
    return {s: int((kept == s).sum()) for s in counts}, {
        s: max(1, math.floor(m * ratio)) for s, m in counts.items()
    }


@pytest.mark.parametrize("method", ["bis", "random", "reliable", "low-mc"])
def test_per_source_budget(rollouts, method: str) -> None:
    selection = select_rollouts(rollouts, method, top_ratio=0.2, progress=False)
    kept, expected = _per_source_budget(rollouts, selection.indices, 0.2)
    assert kept == expected
    assert (np.diff(selection.indices) > 0).all()  # dataset order


def test_global_budget(rollouts) -> None:
    selection = select_rollouts(rollouts, "bis", alpha=0.2, budget=50, progress=False)
    assert len(selection.indices) == 50
    threshold = np.sort(selection.priority[selection.eligible])[::-1][49]
    assert (selection.priority[selection.indices] >= threshold).all()


def test_bis_keeps_the_highest_scores_per_source(rollouts) -> None:
    selection = select_rollouts(rollouts, "bis", alpha=0.05, top_ratio=0.25, progress=False)
    sources = np.asarray(selection.scored["source"])
    kept = np.zeros(len(sources), dtype=bool)
    kept[selection.indices] = True
    for source in set(sources.tolist()):
        mine = sources == source
        assert selection.priority[mine & kept].min() >= selection.priority[
            mine & ~kept & selection.eligible
        ].max(initial=-1)


def test_random_is_seed_stable_and_seed_dependent(rollouts) -> None:
    first = select_rollouts(rollouts, "random", seed=1, top_ratio=0.2, progress=False).indices
    again = select_rollouts(rollouts, "random", seed=1, top_ratio=0.2, progress=False).indices
    other = select_rollouts(rollouts, "random", seed=2, top_ratio=0.2, progress=False).indices
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()


def test_mixed_keeps_only_mixed_rollouts(rollouts) -> None:
    subset = select(rollouts, "mixed", top_ratio=0.5, seed=0, progress=False)
    assert len(subset) > 0
    for row in subset:
        labels = [score > 0 for score in row["mc_scores"] if score is not None]
        assert any(labels) and not all(labels)


def test_reliable_and_low_mc_are_opposite_ends(rollouts) -> None:
    high = select(rollouts, "reliable", top_ratio=0.2, progress=False)
    low = select(rollouts, "low-mc", top_ratio=0.2, progress=False)
    assert np.mean(high["reliability"]) > np.mean(low["reliability"])


def test_full_keeps_every_rankable_rollout(rollouts) -> None:
    subset = select(rollouts, "full", progress=False)
    assert len(subset) == sum(1 for row in rollouts["mc_scores"] if any(s is not None for s in row))


def test_entropy_cut_and_curriculum_from_an_entropy_column(rollouts) -> None:
    rnd = np.random.default_rng(0)
    with_entropy = rollouts.add_column("entropy", rnd.random(len(rollouts)).tolist())
    selection = select_rollouts(
        with_entropy, "entropy", drop=0.25, curriculum=True, top_ratio=1.0, progress=False
    )
    entropy = np.asarray(with_entropy["entropy"])
    kept = selection.indices
    assert (np.diff(entropy[kept]) >= 0).all()  # low to high
    sources = np.asarray(with_entropy["source"])
    for source in set(sources.tolist()):
        mine = np.flatnonzero(sources == source)
        dropped = np.setdiff1d(mine, kept)
        assert len(dropped) == math.floor(len(mine) * 0.25)
        if len(dropped):
            assert entropy[dropped].min() >= entropy[np.intersect1d(mine, kept)].max()
    plain = select_rollouts(with_entropy, "entropy", drop=0.25, top_ratio=1.0, progress=False).indices
    assert (np.diff(plain) > 0).all() and sorted(plain.tolist()) == sorted(kept.tolist())


@pytest.mark.slow
def test_entropy_from_a_scoring_pass(rollouts, tiny_model_dir: Path) -> None:
    small = rollouts.select(range(24))
    selection = select_rollouts(
        small, "entropy", model=str(tiny_model_dir), drop=0.25, curriculum=True, budget=10, progress=False
    )
    entropy = np.asarray(selection.scored["entropy"])
    assert np.isfinite(entropy).all() and ((entropy >= 0) & (entropy <= 1)).all()
    assert len(selection.indices) == 10
    assert (np.diff(entropy[selection.indices]) >= 0).all()


def test_registry_and_bad_parameters(rollouts) -> None:
    assert set(SELECTORS) >= {"bis", "random", "mixed", "reliable", "low-mc", "full", "entropy"}
    with pytest.raises(MPRMError, match="unknown selection method"):
        select_rollouts(rollouts, "nope", top_ratio=0.1)
    with pytest.raises(MPRMError, match="takes no parameter 'alpha'"):
        select_rollouts(rollouts, "random", alpha=0.1, top_ratio=0.1)
    with pytest.raises(MPRMError, match="needs a budget"):
        select_rollouts(rollouts, "bis")
    for ratio in (0.0, 1.5, -1.0):
        with pytest.raises(MPRMError, match="--top-ratio"):
            select_rollouts(rollouts, "bis", top_ratio=ratio)
    with pytest.raises(MPRMError, match="either --top-ratio or --budget"):
        select_rollouts(rollouts, "bis", top_ratio=0.1, budget=3)
    with pytest.raises(MPRMError, match="--entropy-model"):
        select_rollouts(rollouts, "entropy", top_ratio=0.1)


# ---------------------------------------------------------------------------------------- command
def _run(argv: list[str], capsys) -> tuple[int, str]:
    from mprm_hf.cli import main

    code = main(["select", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "arrow"])
def test_select_writes_stepwise_records(synthetic_dir: Path, tmp_path: Path, capsys, fmt: str) -> None:
    from mprm_hf.data.stepwise import load_stepwise

    output = tmp_path / f"subset.{fmt}"
    code, out = _run(["--annotations", str(synthetic_dir / "annotations"), "--method", "bis", "--alpha", "0.2",
                      "--top-ratio", "0.1", "--format", fmt, "--output", str(output), "--quiet"], capsys)  # fmt: skip
    assert code == 0, out
    records = load_stepwise(output)
    assert set(records.column_names) >= {
        "id",
        "source",
        "images",
        "prompt",
        "completions",
        "labels",
        "mc_scores",
    }
    assert len(records) > 0 and f"wrote {len(records)} rollouts" in out
    assert "all " in out and "pos. before" in out


def test_dry_run_stages_card_histogram_and_data(synthetic_dir: Path, tmp_path: Path, capsys) -> None:
    from huggingface_hub import DatasetCard

    output = tmp_path / "ref.jsonl"
    stage = tmp_path / "stage"
    argv = ["--annotations", str(synthetic_dir / "annotations"), "--alpha", "0.05", "--top-ratio", "0.25",
            "--format", "reference", "--output", str(output), "--dry-run", "--stage-dir", str(stage), "--quiet",
            "--push-to-hub", "someone/bis-25"]  # fmt: skip
    code, out = _run(argv, capsys)
    assert code == 0, out
    assert (stage / "data" / "train.jsonl").read_bytes() == output.read_bytes()
    assert (stage / "selection_histogram.png").read_bytes()[:4] == b"\x89PNG"
    card = DatasetCard.load(stage / "README.md")
    metadata = card.data.to_dict()
    assert "bis" in metadata["tags"] and metadata["size_categories"]
    assert "--top-ratio 0.25" in card.text and "selection_histogram.png" in card.text
    n_lines = output.read_text().count("\n")
    assert f"wrote {n_lines} rollouts" in out


def test_push_offline_is_one_line_and_keeps_the_folder(
    synthetic_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    stage = tmp_path / "stage"
    code, out = _run(["--annotations", str(synthetic_dir / "annotations"), "--method", "random", "--seed", "3",
                      "--budget", "40", "--output", str(tmp_path / "r.parquet"), "--format", "parquet",
                      "--push-to-hub", "someone/random-40", "--stage-dir", str(stage), "--quiet"], capsys)  # fmt: skip
    assert code == 1
    error_lines = [line for line in out.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "offline" in error_lines[0]
    assert (stage / "README.md").is_file() and (stage / "data" / "train.parquet").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--annotations", "/nonexistent/annotations", "--top-ratio", "0.1", "--format", "reference"],
            "annotations folder not found",
        ),
        (
            ["--annotations", "{empty}", "--top-ratio", "0.1", "--format", "reference"],
            "no *.jsonl annotation files",
        ),
        (["--annotations", "{synthetic}", "--top-ratio", "2"], "--top-ratio must be in (0, 1]"),
        (
            [
                "--annotations",
                "{synthetic}",
                "--method",
                "random",
                "--top-ratio",
                "0.1",
                "--format",
                "reference",
            ],
            "--format reference",
        ),
        (
            ["--annotations", "{synthetic}", "--method", "mixed", "--alpha", "0.1", "--top-ratio", "0.1"],
            "--alpha does not apply",
        ),
    ],
)
def test_bad_input_is_one_line(
    synthetic_dir: Path, tmp_path: Path, capsys, argv: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    argv = [arg.format(empty=tmp_path / "empty", synthetic=synthetic_dir / "annotations") for arg in argv]
    code, out = _run([*argv, "--output", str(tmp_path / "o.jsonl"), "--quiet"], capsys)
    assert code == 1
    lines = [line for line in out.strip().splitlines() if line]
    assert len(lines) == 1 and message in lines[0], out


def test_reference_and_stepwise_paths_choose_the_same_rollouts(
    synthetic_dir: Path, tmp_path: Path, rollouts
) -> None:
    """On a clean corpus the datasets path ranks exactly as the reference scan does."""
    from mprm_hf.selection.reference import build_reference_subset

    result = build_reference_subset(synthetic_dir / "annotations", tmp_path / "r.jsonl", alpha=0.2, top_ratio=0.1,
                                    use_cache=False, progress=False)  # fmt: skip
    selection = select_rollouts(rollouts, "bis", alpha=0.2, top_ratio=0.1, progress=False)
    chosen = rollouts.select(selection.indices)
    ours = sorted(tuple(images) for images in chosen["image"])
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    theirs = sorted(
        tuple(line["image"]) if isinstance(line["image"], list) else (line["image"],) for line in lines
    )
    assert len(ours) == int(result.kept.sum()) == result.n_written
    assert ours == theirs
