"""Scores, selectors and budgets on the score table of the synthetic world; the select command's outputs,
report and card; every format keeps the rollouts the reference output keeps."""

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
from mprm_hf.selection.scan import scan_corpus
from mprm_hf.selection.selectors import SELECTORS, dataset_columns, select, select_rows
from mprm_hf.selection.subset import build_subset, table_columns


@pytest.fixture(scope="module")
def table(synthetic_dir: Path):
    return scan_corpus(synthetic_dir / "annotations", use_cache=False, progress=False)


@pytest.fixture(scope="module")
def columns(table):
    return table_columns(table)


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
    n_scored, n_pos, sum_pos = np.array([4, 4, 3, 0]), np.array([2, 0, 3, 0]), np.array([1.5, 0.0, 2.4, 0.0])
    p = scores.p_pos(n_pos, n_scored)
    r = scores.reliability(sum_pos, n_pos)
    assert p[:3].tolist() == [0.5, 0.0, 1.0] and math.isnan(p[3])
    assert r.tolist() == [0.75, 1.0, 2.4 / 3, 1.0]
    assert scores.bis(n_scored, n_pos, sum_pos, 0.05)[:3].tolist() == [
        (0.25 + 0.05) * 0.75,
        0.05,
        0.05 * (2.4 / 3),
    ]
    assert scores.binary_entropy(np.array([0.0, 0.5, 1.0])).tolist() == [0.0, 1.0, 0.0]
    entropy = scores.mean_step_entropy([[0.5, 1.0], [], [0.0]])
    assert entropy[0] == 0.5 and math.isnan(entropy[1]) and entropy[2] == 0.0
    assert scores.top_k(9, 0.25) == 2 and scores.top_k(3, 0.1) == 1
    for alpha in (-0.1, math.nan, math.inf, "x"):
        with pytest.raises(MPRMError, match="--alpha"):
            scores.bis(n_scored, n_pos, sum_pos, alpha)


def test_dataset_columns_skip_missing_scores_like_the_reference() -> None:
    import datasets

    ds = datasets.Dataset.from_dict(
        {"source": ["a", "a", "b"], "mc_scores": [[0.5, None, 0.0, 1.0], [None], [0.0, 0.0]]},
        features=datasets.Features(
            {"source": datasets.Value("string"), "mc_scores": datasets.List(datasets.Value("float64"))}
        ),
    )
    columns = dataset_columns(ds)
    assert columns["n_scored"].tolist() == [3, 0, 2] and columns["n_pos"].tolist() == [2, 0, 0]
    reliability = scores.reliability(columns["sum_pos"], columns["n_pos"])
    assert reliability[0] == 0.75 and reliability[2] == 1.0
    assert columns["source"].tolist() == [0, 0, 1]
    assert select(ds, "full")["mc_scores"] == [[0.5, None, 0.0, 1.0], [0.0, 0.0]]


# --------------------------------------------------------------------------------------- selectors
def _per_source(columns, rows, ratio):
    sources = columns["source"]
    kept = {int(s): int((sources[rows] == s).sum()) for s in np.unique(sources)}
    return kept, {int(s): max(1, math.floor(int((sources == s).sum()) * ratio)) for s in np.unique(sources)}


@pytest.mark.parametrize("method", ["bis", "random", "reliable", "low-mc"])
def test_per_source_budget(columns, method: str) -> None:
    selection = select_rows(columns, method, top_ratio=0.2)
    kept, expected = _per_source(columns, selection.rows, 0.2)
    assert kept == expected
    assert (np.diff(selection.rows) > 0).all()  # file order


def test_global_budget(columns) -> None:
    selection = select_rows(columns, "bis", alpha=0.2, budget=50)
    assert len(selection.rows) == 50
    threshold = np.sort(selection.priority[selection.eligible])[::-1][49]
    assert (selection.priority[selection.rows] >= threshold).all()


def test_bis_keeps_the_highest_scores_per_source(columns) -> None:
    selection = select_rows(columns, "bis", alpha=0.05, top_ratio=0.25)
    kept = np.zeros(len(columns["source"]), dtype=bool)
    kept[selection.rows] = True
    for source in np.unique(columns["source"]):
        mine = columns["source"] == source
        assert selection.priority[mine & kept].min() >= selection.priority[mine & ~kept].max(initial=-1)


def test_random_is_seed_stable_and_seed_dependent(columns) -> None:
    first = select_rows(columns, "random", seed=1, top_ratio=0.2).rows
    again = select_rows(columns, "random", seed=1, top_ratio=0.2).rows
    other = select_rows(columns, "random", seed=2, top_ratio=0.2).rows
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()


def test_mixed_keeps_only_mixed_rollouts(columns) -> None:
    rows = select_rows(columns, "mixed", top_ratio=0.5, seed=0).rows
    assert len(rows) > 0
    assert ((columns["n_pos"][rows] > 0) & (columns["n_pos"][rows] < columns["n_scored"][rows])).all()


def test_reliable_and_low_mc_are_opposite_ends(columns) -> None:
    high = select_rows(columns, "reliable", top_ratio=0.2).rows
    low = select_rows(columns, "low-mc", top_ratio=0.2).rows
    reliability = scores.reliability(columns["sum_pos"], columns["n_pos"])
    assert reliability[high].mean() > reliability[low].mean()


def test_full_keeps_every_rankable_rollout(columns, rollouts) -> None:
    assert len(select_rows(columns, "full").rows) == len(columns["n_scored"])
    assert len(select(rollouts, "full")) == sum(
        1 for row in rollouts["mc_scores"] if any(s is not None for s in row)
    )


def test_entropy_cut_and_curriculum_from_given_entropies(columns) -> None:
    entropy = np.random.default_rng(0).random(len(columns["source"]))
    table = {**columns, "entropy": entropy}  # the score table's entropy column
    selection = select_rows(table, "entropy", drop=0.25, curriculum=True, top_ratio=1.0)
    kept = selection.rows
    assert (np.diff(entropy[kept]) >= 0).all()  # low to high
    for source in np.unique(columns["source"]):
        mine = np.flatnonzero(columns["source"] == source)
        dropped = np.setdiff1d(mine, kept)
        assert len(dropped) == math.floor(len(mine) * 0.25)
        if len(dropped):
            assert entropy[dropped].min() >= entropy[np.intersect1d(mine, kept)].max()
    plain = select_rows(table, "entropy", drop=0.25, top_ratio=1.0).rows
    assert (np.diff(plain) > 0).all() and sorted(plain.tolist()) == sorted(kept.tolist())
    with pytest.raises(MPRMError, match="needs --entropy-model"):
        select_rows(columns, "entropy", top_ratio=1.0)


@pytest.mark.slow
def test_entropy_from_a_scoring_pass(tmp_path: Path, tiny_model_dir: Path) -> None:
    from mprm_hf.data.synthetic import write_synthetic

    corpus = tmp_path / "small"
    write_synthetic(corpus, rollouts=40, benchmark_traces=0, seed=3)
    options = {"model": str(tiny_model_dir), "drop": 0.25, "cache_dir": tmp_path / "cache", "progress": False}
    result = build_subset(
        corpus, tmp_path / "e.jsonl", method="entropy", curriculum=True, budget=10, **options
    )
    entropy = -result.selection.priority
    # a column of the cached score table, computed in the same scan: a second run reads it back
    assert result.scores.column("entropy").tolist() == entropy.tolist() and not result.cached
    again = build_subset(corpus, tmp_path / "e2.jsonl", method="entropy", budget=5, **options)
    assert again.cached and again.scores.column("entropy").tolist() == entropy.tolist()
    assert build_subset(corpus, tmp_path / "b.jsonl", top_ratio=0.5, cache_dir=tmp_path / "cache").cached
    assert np.isfinite(entropy[result.selection.eligible]).all()
    assert ((entropy[result.selection.eligible] >= 0) & (entropy[result.selection.eligible] <= 1)).all()
    assert len(result.selection.rows) == 10 and result.n_written == 10
    assert (np.diff(entropy[result.selection.rows]) >= 0).all()
    assert result.selection.order_note.startswith("entropy")


def test_registry_and_bad_parameters(columns) -> None:
    assert set(SELECTORS) >= {"bis", "random", "mixed", "reliable", "low-mc", "full", "entropy"}
    with pytest.raises(MPRMError, match="unknown selection method"):
        select_rows(columns, "nope", top_ratio=0.1)
    with pytest.raises(MPRMError, match="takes no parameter 'alpha'"):
        select_rows(columns, "random", alpha=0.1, top_ratio=0.1)
    with pytest.raises(MPRMError, match="needs a budget"):
        select_rows(columns, "bis")
    for ratio in (0.0, 1.5, -1.0, math.nan):
        with pytest.raises(MPRMError, match="--top-ratio"):
            select_rows(columns, "bis", top_ratio=ratio)
    with pytest.raises(MPRMError, match="either --top-ratio or --budget"):
        select_rows(columns, "bis", top_ratio=0.1, budget=3)
    with pytest.raises(MPRMError, match="--entropy-model"):
        select_rows(columns, "entropy", top_ratio=0.1)
    with pytest.raises(MPRMError, match="--alpha must be a finite number >= 0"):
        select_rows(columns, "bis", alpha=-1.0, top_ratio=0.1)


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
    assert json.loads((stage / "selection.json").read_text())["selector_params"]["alpha"] == 0.05
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
    assert (stage / "README.md").is_file() and (stage / "data" / "train-00000-of-00001.parquet").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--annotations", "/nonexistent/annotations", "--top-ratio", "0.1", "--format", "reference"],
            "no such folder",
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


def _tie_heavy_corpus(folder: Path, n: int, seed: int) -> Path:
    """Clean lines whose MC scores come from a few values, so that exact ties and near-ties (the same
    scores in other orders) are everywhere; every image is unique, so an output line names its rollout;
    a few rollouts are dropped at conversion (an empty step) and one has an infinite score."""
    rnd = random.Random(seed)
    annotations = folder / "annotations"
    annotations.mkdir(parents=True)
    values = [0.0, 0.0, 0.0625, 0.1, 0.2, 0.3, 0.5, 1.0]
    for name, count in (("a_src", n // 2), ("b_src", n // 3), ("c_src", n - n // 2 - n // 3)):
        lines = []
        for index in range(count):
            steps = [{"step": f"s{k}", "score": rnd.choice(values)} for k in range(rnd.randint(1, 6))]
            if index % 997 == 5:
                steps[0]["step"] = "  "
            if index == 11:
                steps[0]["score"] = float("inf")
            lines.append(
                json.dumps({"image": f"{name}/{index}.png", "question": "q", "steps_with_score": steps})
            )
        (annotations / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_every_format_keeps_the_rollouts_the_reference_output_keeps(tmp_path: Path) -> None:
    """For a grid of alphas and ratios on a tie-heavy corpus of 12k rollouts: the jsonl / parquet / arrow
    outputs and the `Dataset` API keep exactly the rollouts (by id) that the reference output keeps,
    except the one with an infinite score, which only stepwise formats drop (and report)."""
    import datasets

    from mprm_hf.data.visualprm400k import load_visualprm400k

    corpus = _tie_heavy_corpus(tmp_path / "corpus", 12_000, seed=5)
    ds, _ = load_visualprm400k(corpus, cache_dir=tmp_path / "hf")
    cache = tmp_path / "cache"
    for alpha in (0.0, 0.05, 0.2):
        for ratio in (0.02, 0.1, 0.25):
            reference = build_subset(corpus, tmp_path / "r.jsonl", fmt="reference", alpha=alpha, top_ratio=ratio,
                                     cache_dir=cache, progress=False)  # fmt: skip
            expected = set()
            for line in (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines():
                source, index = json.loads(line)["image"].removesuffix(".png").split("/")
                expected.add(f"{source}:{int(index) + 1}")
            assert len(expected) == reference.n_written
            infinite = {f"{name}:12" for name in ("a_src", "b_src", "c_src")} & expected
            for fmt in ("jsonl", "parquet", "arrow"):
                output = tmp_path / f"s.{fmt}"
                result = build_subset(corpus, output, fmt=fmt, alpha=alpha, top_ratio=ratio, cache_dir=cache,
                                      progress=False)  # fmt: skip
                if fmt == "jsonl":
                    ids = [json.loads(line)["id"] for line in output.read_text().splitlines()]
                elif fmt == "parquet":
                    ids = datasets.Dataset.from_parquet(str(output))["id"]
                else:
                    ids = datasets.load_from_disk(str(output))["id"]
                assert set(ids) == expected - infinite, (alpha, ratio, fmt)
                assert ids == result.written_ids()
                assert any("non-finite" in note for note in result.report.notes) == bool(infinite)
            chosen = select(ds, "bis", alpha=alpha, top_ratio=ratio)
            assert set(chosen["id"]) == set(reference.written_ids()) | {
                f"{name}:{line}" for name, line in zip(*_dropped(reference), strict=True)
            }, (alpha, ratio)


def _dropped(result) -> tuple[list[str], list[int]]:
    """(source, line) of the rollouts the selector kept and the conversion dropped."""
    rows = result.selection.rows[~result.written_rows.written]
    files, lines = result.scores.column("file")[rows], result.scores.column("line")[rows]
    return [result.files[f].stem for f in files.tolist()], lines.tolist()


def test_select_refuses_to_overwrite_its_input_and_bad_thresholds(
    synthetic_dir: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "annotations").mkdir(parents=True)
    source = next((synthetic_dir / "annotations").glob("*.jsonl"))
    target = corpus / "annotations" / source.name
    target.write_bytes(source.read_bytes())
    with pytest.raises(MPRMError, match="is one of the annotation files"):
        build_subset(corpus, target, alpha=0.2, top_ratio=0.1, use_cache=False, progress=False)
    assert target.read_bytes() == source.read_bytes()
    with pytest.raises(MPRMError, match="--threshold must be a finite number"):
        build_subset(
            corpus, tmp_path / "o.jsonl", alpha=0.2, top_ratio=0.1, threshold=math.nan, progress=False
        )
