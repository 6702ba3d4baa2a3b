"""Best-of-N: the synthetic pool, the bootstrap evaluation, `mprm-hf bon` end to end, broken pools."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from mprm_hf.bon import REFERENCES, evaluate, pool_rewards, run_bon
from mprm_hf.cli import main as cli_main
from mprm_hf.data.bon_pool import POOL_FILE, Pool, load_pool
from mprm_hf.data.synthetic import BON_DIR
from mprm_hf.errors import MPRMError
from mprm_hf.modeling import load_model_and_processor
from mprm_hf.scoring import score_traces


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pool written by `mprm-hf synth` alone (no corpus, no benchmark): 10 questions x 6."""
    out = tmp_path_factory.mktemp("bon-synth")
    argv = ["synth", "--out", str(out), "--rollouts", "0", "--benchmark-traces", "0"]
    assert cli_main([*argv, "--bon-questions", "10", "--bon-candidates", "6"]) == 0
    return out / BON_DIR


def _lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / POOL_FILE).read_text(encoding="utf-8").splitlines()]


def test_synth_writes_a_graded_policy_like_pool(pool_dir: Path) -> None:
    records = _lines(pool_dir)
    assert len(records) == 10 and all(len(r["candidates"]) == 6 for r in records)
    options = [option for record in records for option in record["candidates"]]
    for record in records:
        assert all((pool_dir / image).is_file() for image in record["images"])
        for option in record["candidates"]:
            assert option["correct"] == (option["answer"] == record["answer"])
            assert option["steps"][-1].endswith(f"so the answer is {option['answer']}.")
    # right and wrong answers, traces of several lengths, and questions the policy answers both ways
    assert 0 < sum(option["correct"] for option in options) < len(options)
    assert len({len(option["steps"]) for option in options}) > 2
    assert any(len({o["correct"] for o in r["candidates"]}) == 2 for r in records)


def test_synth_pool_is_deterministic_and_seeded(pool_dir: Path, tmp_path: Path) -> None:
    from mprm_hf.data.synthetic import write_bon_pool

    write_bon_pool(tmp_path / "same", 10, 6, seed=0)
    write_bon_pool(tmp_path / "other", 10, 6, seed=1)
    assert (tmp_path / "same" / BON_DIR / POOL_FILE).read_bytes() == (pool_dir / POOL_FILE).read_bytes()
    assert (tmp_path / "other" / BON_DIR / POOL_FILE).read_bytes() != (pool_dir / POOL_FILE).read_bytes()


def test_pool_folder_is_a_hub_dataset(pool_dir: Path, tmp_path: Path) -> None:
    import datasets

    loaded = datasets.load_dataset(str(pool_dir), cache_dir=str(tmp_path / "cache"))
    assert list(loaded) == ["test"]
    rows = loaded["test"]
    assert rows.num_rows == 10
    assert rows[0]["candidates"][0]["steps"] == _lines(pool_dir)[0]["candidates"][0]["steps"]
    assert "configs:" in (pool_dir / "README.md").read_text(encoding="utf-8")


def test_a_hub_id_offline_fails_in_one_line() -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(MPRMError, match="the Hub cannot be reached") as caught:
        load_pool("someone/no-such-pool")
    assert "\n" not in str(caught.value)


def _hand_pool(correct: list[list[bool]], answers: list[list[str]]) -> Pool:
    records = [
        {
            "id": str(q),
            "source": "even" if q % 2 == 0 else "odd",
            "answer": "right",
            "candidates": [
                {"steps": ["s"], "answer": a, "correct": c} for c, a in zip(row, names, strict=True)
            ],
        }
        for q, (row, names) in enumerate(zip(correct, answers, strict=True))
    ]
    return Pool(Path("hand.jsonl"), records)


def test_evaluation_against_its_definitions() -> None:
    rng = np.random.default_rng(3)
    correct = (rng.random((40, 8)) < 0.4).tolist()
    answers = [["right" if c else f"wrong{int(rng.integers(0, 3))}" for c in row] for row in correct]
    pool = _hand_pool(correct, answers)
    truth = np.array(correct, dtype=float)
    scores = {"perfect": {"mean": truth}, "inverted": {"mean": -truth}, "constant": {"mean": 0 * truth}}
    report = evaluate(pool, scores, [1, 3, 8], bootstrap=300, seed=5)
    overall = report["overall"]
    rows = truth.astype(bool)
    for n in ("1", "3", "8"):
        ref = {name: overall["reference"][name][n]["accuracy"] for name in REFERENCES}
        line = {label: overall["models"][label]["mean"][n] for label in scores}
        assert line["perfect"]["accuracy"] == ref["oracle"]  # the best scorer is the oracle
        assert line["constant"]["accuracy"] == ref["random"]  # ties go to a random candidate
        assert line["inverted"]["accuracy"] <= ref["random"] <= ref["oracle"]
        for entry in [*line.values(), *overall["reference"].values()]:
            entry = entry.get(n, entry)
            assert entry["ci"][0] <= entry["accuracy"] <= entry["ci"][1]
        assert line["perfect"]["vs_random"]["difference"] == pytest.approx(ref["oracle"] - ref["random"])
    # with all K drawn the lines are exact: pass@K, the share of right candidates, all K right, the vote
    assert overall["reference"]["oracle"]["8"]["accuracy"] == pytest.approx(rows.any(axis=1).mean())
    assert overall["reference"]["random"]["1"]["accuracy"] == pytest.approx(truth.mean(), abs=0.03)
    assert overall["models"]["inverted"]["mean"]["8"]["accuracy"] == pytest.approx(rows.all(axis=1).mean())
    # the vote at N = K: the most frequent answer, a tie settled by a random one of the tied answers
    expected = []
    for names in answers:
        counts = {name: names.count(name) for name in names}
        tied = [name for name, count in counts.items() if count == max(counts.values())]
        expected.append(tied.count("right") / len(tied))
    assert overall["reference"]["majority"]["8"]["accuracy"] == pytest.approx(np.mean(expected), abs=0.03)
    assert set(report["per_source"]) == {"even", "odd"}
    assert report["per_source"]["even"]["questions"] == 20
    assert evaluate(pool, scores, [1, 3, 8], bootstrap=300, seed=5) == report  # same seed, same report
    assert evaluate(pool, scores, [3], bootstrap=300, seed=6) != evaluate(
        pool, scores, [3], bootstrap=300, seed=5
    )
    pair = overall["pairs"]["perfect - inverted"]["mean"]["3"]
    assert pair["difference"] > 0 and pair["ci"][0] > 0


@pytest.fixture(scope="module")
def two_models(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The tiny model and a copy of it in another folder: two models by path, one by weights."""
    copy = tmp_path_factory.mktemp("copy") / "tiny-copy"
    shutil.copytree(tiny_model_dir, copy)
    return [str(tiny_model_dir), str(copy)]


def test_bon_end_to_end_scores_once_and_caches(
    pool_dir: Path, two_models: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "report"
    argv = ["bon", "--model", two_models[0], "--model", two_models[1], "--pool", str(pool_dir)]
    argv += [
        "--out",
        str(out),
        "--n",
        "1,2,4",
        "--aggregate",
        "mean,min",
        "--bootstrap",
        "200",
        "--device",
        "cpu",
    ]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert (
        "majority (reference)" in printed
        and "tiny-qwen2-vl [mean]" in printed
        and "tiny-copy [min]" in printed
    )
    # the copy keeps names, sizes and times: the same fingerprint, so its rewards come from the cache
    assert "per source, accuracy@4" in printed and "2 model(s) (1 from the cache)" in printed
    report = json.loads((out / "bon.json").read_text(encoding="utf-8"))
    assert (out / "bon.png").stat().st_size > 1000
    assert report["n"] == [1, 2, 4] and report["aggregates"] == ["mean", "min"] and report["questions"] == 10
    overall = report["overall"]
    for label in ("tiny-qwen2-vl", "tiny-copy"):
        # N = 1 leaves nothing to choose: every line is random choice, draw for draw
        assert (
            overall["models"][label]["mean"]["1"]["accuracy"]
            == overall["reference"]["random"]["1"]["accuracy"]
        )
    # the same weights in two folders pick the same candidates
    assert overall["pairs"]["tiny-qwen2-vl - tiny-copy"]["mean"]["4"]["difference"] == 0
    # the cached rewards are the model's, trace by trace (scored here one at a time)
    model, processor = load_model_and_processor(two_models[0])
    pool = load_pool(pool_dir)
    rewards, info = pool_rewards(pool, two_models[0])
    assert info["cached"] and Path(info["cache"]).parent == pool_dir / ".bon-cache"
    traces = [
        {"question": r["question"], "images": [str(pool_dir / i) for i in r["images"]], "steps": o["steps"]}
        for r in pool.records
        for o in r["candidates"]
    ]
    single = score_traces(model, processor, traces, batch_size=1, progress=False)
    flat = [trace for question in rewards for trace in question]
    assert [len(t) for t in flat] == [len(t) for t in single]
    assert np.allclose(np.concatenate(flat), np.concatenate(single), atol=1e-5)
    # a new N or aggregate reads the cache; a retrained model (a changed file) is scored again
    again = run_bon(
        two_models, pool_dir, None, n_values=[2], aggregates=["last"], bootstrap=50, progress=False
    )
    assert all(model["cached"] for model in again["models"])
    config = Path(two_models[1]) / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    changed = run_bon(two_models, pool_dir, None, n_values=[2], bootstrap=50, progress=False)
    assert [model["cached"] for model in changed["models"]] == [True, False]


def _broken(tmp_path: Path, pool_dir: Path, edit) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(pool_dir, folder, ignore=shutil.ignore_patterns(".bon-cache"))
    records = _lines(folder)
    edit(records)
    (folder / POOL_FILE).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rs: rs[1].pop("answer"), r"pool.jsonl:2: field 'answer' \(the reference answer\) is missing"),
        (
            lambda rs: rs[6]["candidates"][2].pop("answer"),
            r"pool.jsonl:7: field 'candidates\[2\].answer' is missing",
        ),
        (
            lambda rs: rs[6]["candidates"][2].pop("steps"),
            r"pool.jsonl:7: field 'candidates\[2\].steps' must be",
        ),
        (
            lambda rs: rs[0]["candidates"][1].update(steps=[]),
            r"pool.jsonl:1: field 'candidates\[1\].steps' must be",
        ),
        (
            lambda rs: rs[3]["candidates"][0].update(correct="yes"),
            r"pool.jsonl:4: field 'candidates\[0\].correct'",
        ),
        (lambda rs: rs[4].update(id=rs[2]["id"]), r"pool.jsonl:5: field 'id' repeats line 3"),
    ],
)
def test_broken_pools_fail_in_one_located_line(
    tmp_path: Path, pool_dir: Path, tiny_model_dir: Path, edit, message: str, capsys: pytest.CaptureFixture
) -> None:
    folder = _broken(tmp_path, pool_dir, edit)
    argv = ["bon", "--model", str(tiny_model_dir), "--pool", str(folder), "--out", str(tmp_path / "o")]
    assert cli_main(argv) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert re.search(message, error), error
    assert not (tmp_path / "o").exists()


def test_questions_without_candidates_are_skipped_and_counted(
    tmp_path: Path, pool_dir: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    def empty_two(records: list[dict]) -> None:
        records[2]["candidates"] = []
        records[5]["candidates"] = []

    folder = _broken(tmp_path, pool_dir, empty_two)
    out = tmp_path / "o"
    argv = ["bon", "--model", str(tiny_model_dir), "--pool", str(folder), "--out", str(out), "--n", "2,4,8"]
    assert cli_main([*argv, "--bootstrap", "50", "--aggregate", "mean"]) == 0
    printed = capsys.readouterr().out
    assert "skipped: 2 question(s) with no candidates" in printed
    assert "N left out (more than the fewest candidates, 6): 8" in printed
    report = json.loads((out / "bon.json").read_text(encoding="utf-8"))
    assert report["questions"] == 8 and report["skipped"] == {"no candidates": 2} and report["n"] == [2, 4]

    def empty_all(records: list[dict]) -> None:
        for record in records:
            record["candidates"] = []

    folder = _broken(tmp_path / "all", pool_dir, empty_all)
    assert cli_main(["bon", "--model", str(tiny_model_dir), "--pool", str(folder), "--out", str(out)]) == 1
    assert "no questions (skipped: 10 with no candidates)" in capsys.readouterr().err


def test_bad_flags_are_one_line(pool_dir: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["bon", "--model", str(tiny_model_dir), "--pool", str(pool_dir), "--out", "unused"]
    assert cli_main([*base, "--n", "32"]) == 1
    assert "--n: no N in [1, 6]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main([*base, "--aggregate", "median"])
    assert "choose from mean, min, last, product" in capsys.readouterr().err
    assert cli_main([*base[:3], "--model", str(tiny_model_dir), *base[3:]]) == 1
    assert "the same model is given twice" in capsys.readouterr().err
