"""Best-of-N reranking: aggregates, the library function, and `mprm-hf rerank` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from mprm_hf.cli import main as cli_main
from mprm_hf.errors import MPRMError
from mprm_hf.modeling import load_model_and_processor
from mprm_hf.rerank import aggregate_rewards, read_candidates, rerank
from mprm_hf.scoring import score_traces


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    return load_model_and_processor(tiny_model_dir)


def test_aggregates() -> None:
    rewards = [0.9, 0.2, 0.6]
    assert aggregate_rewards(rewards, "mean") == pytest.approx(1.7 / 3)
    assert aggregate_rewards(rewards, "min") == 0.2
    assert aggregate_rewards(rewards, "last") == 0.6
    assert aggregate_rewards(rewards, "product") == pytest.approx(0.9 * 0.2 * 0.6)
    assert math.isclose(aggregate_rewards([0.5]), 0.5)
    with pytest.raises(MPRMError, match="unknown aggregate 'median'"):
        aggregate_rewards(rewards, "median")
    with pytest.raises(MPRMError, match="without steps"):
        aggregate_rewards([], "mean")


def _questions() -> list[dict]:
    red = Image.new("RGB", (64, 64), (255, 0, 0))
    return [
        {
            "question": "What colour is the square?",
            "images": [red],
            "candidates": [
                {"steps": ["The square is red.", "So the answer is red."]},
                {"steps": ["The square is blue."]},
                {"steps": ["There is a square.", "It is green.", "So green."]},
            ],
        },
        {
            "question": "2 + 2?",
            "images": [],
            "candidates": [{"steps": ["2 + 2 = 4."]}, {"steps": ["2 + 2 = 5."]}],
        },
    ]


@pytest.mark.parametrize("how", ["mean", "min", "last", "product"])
def test_rerank_picks_the_best_aggregate(tiny, how: str) -> None:
    model, processor = tiny
    questions = _questions()
    ranked = rerank(model, processor, questions, aggregate=how, batch_size=2, progress=False)
    flat = [
        {"question": q["question"], "images": q["images"], "steps": c["steps"]}
        for q in questions
        for c in q["candidates"]
    ]
    rewards = score_traces(model, processor, flat, batch_size=5, progress=False)
    per_question = [rewards[:3], rewards[3:]]
    for result, expected_rewards in zip(ranked, per_question, strict=True):
        scores = [aggregate_rewards(r, how) for r in expected_rewards]
        assert result["aggregate"] == how
        assert result["candidate_scores"] == pytest.approx(scores, abs=1e-5)
        assert result["best_index"] == max(range(len(scores)), key=lambda i: scores[i])
        assert [len(r) for r in result["step_rewards"]] == [len(r) for r in expected_rewards]


def test_ties_go_to_the_earliest_candidate(tiny) -> None:
    model, processor = tiny
    same = {"steps": ["Identical step."]}
    ranked = rerank(model, processor, [{"question": "q", "candidates": [same, same, same]}], progress=False)
    assert ranked[0]["best_index"] == 0


def _write_candidates(folder: Path) -> Path:
    (folder / "imgs").mkdir()
    Image.new("RGB", (64, 64), (0, 200, 0)).save(folder / "imgs" / "green.png")
    lines = [
        {
            "id": "q1",
            "question": "Colour?",
            "images": ["imgs/green.png"],
            "candidates": [{"steps": ["Green."]}, {"steps": ["Red.", "So red."]}],
        },
        {"id": "q2", "question": "Count?", "images": "imgs/green.png", "candidates": [{"steps": ["One."]}]},
    ]
    path = folder / "candidates.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8")
    return path


def test_cli_rerank_end_to_end(
    tiny_model_dir: Path, tiny, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model, processor = tiny
    candidates = _write_candidates(tmp_path)
    out = tmp_path / "out" / "ranked.jsonl"
    argv = ["rerank", "--model", str(tiny_model_dir), "--candidates", str(candidates), "--aggregate", "min"]
    assert cli_main([*argv, "--out", str(out), "--device", "cpu"]) == 0
    assert "reranked 2 questions (3 candidates) by min step reward" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["id"] for row in rows] == ["q1", "q2"]
    assert rows[0]["images"] == ["imgs/green.png"]  # written as given, resolved against the file's folder
    expected = rerank(
        model,
        processor,
        [{**row, "images": [str(tmp_path / "imgs" / "green.png")]} for row in read_candidates(candidates)],
        aggregate="min",
        progress=False,
    )
    for row, result in zip(rows, expected, strict=True):
        assert row["best_index"] == result["best_index"]
        assert row["candidate_scores"] == pytest.approx(result["candidate_scores"], abs=1e-5)
    assert rows[1]["best_index"] == 0 and len(rows[1]["step_rewards"]) == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "candidates.jsonl:1: not valid JSON"),
        ('{"question": "q"}', "candidates.jsonl:1: field 'candidates' must be a non-empty list"),
        (
            '{"question": "q", "candidates": [{"steps": ["a", ""]}]}',
            r"field 'candidates\[0\].steps\[1\]' is empty",
        ),
        ('{"question": "", "candidates": [{"steps": ["a"]}]}', "field 'question' is missing"),
        (
            '{"question": "q", "images": ["no.png"], "candidates": [{"steps": ["a"]}]}',
            r"field 'images\[0\]': file not found",
        ),
    ],
)
def test_candidates_file_errors_name_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "candidates.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(MPRMError, match=message):
        read_candidates(path)


def test_cli_rerank_errors_are_one_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [
        "rerank",
        "--model",
        str(tiny_model_dir),
        "--candidates",
        str(tmp_path / "none.jsonl"),
        "--out",
        "x",
    ]
    assert cli_main(argv) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "none.jsonl: candidates file not found" in error
