"""Nothing lost, nothing half-written: atomic writes under failure, kills and concurrent writers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mprm_hf.fileio import atomic_files_into, atomic_output, folder_fingerprint, write_text_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_output(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    folder = tmp_path / "data.arrow"
    with atomic_output(folder, folder=True) as staging:
        (staging / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_output(folder, folder=True) as staging:
        (staging / "b").write_text("2")
        raise RuntimeError
    assert sorted(p.name for p in folder.iterdir()) == ["a"]
    with atomic_output(folder, folder=True) as staging:  # a folder replaces a folder
        (staging / "c").write_text("3")
    assert sorted(p.name for p in folder.iterdir()) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.arrow", "out.json"]


def test_files_written_into_a_folder_keep_what_else_it_holds(tmp_path: Path) -> None:
    """A folder's files replaced one rename each (a GRPO policy beside its Trainer's checkpoints): the
    checkpoints stay, a failed write changes nothing, no staging folder is left."""
    folder = tmp_path / "policy"
    (folder / "checkpoint-2").mkdir(parents=True)
    (folder / "model.safetensors").write_text("old weights")
    with pytest.raises(RuntimeError), atomic_files_into(folder) as staging:
        (staging / "model.safetensors").write_text("half")
        raise RuntimeError("disk full")
    assert (folder / "model.safetensors").read_text() == "old weights"
    with atomic_files_into(folder) as staging:
        (staging / "model.safetensors").write_text("new weights")
        (staging / "grpo.json").write_text("{}")
    assert (folder / "model.safetensors").read_text() == "new weights"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2", "grpo.json", "model.safetensors"]


def test_leftovers_of_a_dead_writer_are_removed_and_a_live_one_is_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "out.jsonl"
    stale = tmp_path / f".out.jsonl.{dead.pid}.abc.tmp"
    stale.write_text("killed half")
    live = tmp_path / f".out.jsonl.{os.getpid()}.xyz.tmp"
    live.write_text("another writer, still running")
    write_text_atomic(target, "new")
    assert not stale.exists() and live.exists() and target.read_text() == "new"


def test_the_fingerprint_follows_the_weights(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"1" * 10)
    first = folder_fingerprint(model)
    assert folder_fingerprint(model) == first
    (model / "model.safetensors").write_bytes(b"2" * 11)
    assert folder_fingerprint(model) != first
    assert folder_fingerprint("owner/hub-model") is None


def _select(annotations: Path, output: Path, ratio: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mprm_hf.cli", "select", "--annotations", str(annotations), "--alpha", "0.2",
         "--top-ratio", ratio, "--format", "reference", "--output", str(output), "--quiet", "--no-cache"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mprm_hf.data.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("corpus")
    write_synthetic(out, rollouts=30_000, benchmark_traces=0, images=False)
    return out / "annotations"


def test_concurrent_selects_into_one_output_each_write_a_whole_result(corpus: Path, tmp_path: Path) -> None:
    """Two runs with different ratios into the same file: the file ends up exactly one of the two
    results, each run's own temporary is its own, and both exit 0."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    output = tmp_path / "x.jsonl"
    alone = {}
    for ratio in ("0.1", "0.3"):
        process = _select(corpus, tmp_path / f"alone_{ratio}.jsonl", ratio, env)
        assert process.wait() == 0, process.stderr.read().decode()
        alone[ratio] = (tmp_path / f"alone_{ratio}.jsonl").read_bytes()
    runs = [_select(corpus, output, ratio, env) for ratio in ("0.1", "0.3")]
    assert [run.wait() for run in runs] == [0, 0]
    assert output.read_bytes() in alone.values()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.jsonl")]


def test_a_killed_select_leaves_the_old_output_whole(corpus: Path, tmp_path: Path) -> None:
    """SIGKILL at several moments of a run: the output is always one whole result (the previous one
    until the rename), and the next run removes what the killed one left."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    output = tmp_path / "x.jsonl"
    whole = {}
    for ratio in ("0.1", "1.0"):
        started = time.perf_counter()
        run = _select(corpus, tmp_path / f"whole_{ratio}.jsonl", ratio, env)
        assert run.wait() == 0
        duration = time.perf_counter() - started  # the last: a run on the cached score table, as below
        whole[ratio] = (tmp_path / f"whole_{ratio}.jsonl").read_bytes()
    assert _select(corpus, output, "0.1", env).wait() == 0
    killed = 0
    # moments spread over a run as long as this machine takes (a fixed delay can outlast a quick run)
    for delay in (0.2 * duration, 0.4 * duration, 0.6 * duration, 0.8 * duration, 0.95 * duration):
        run = _select(corpus, output, "1.0", env)
        time.sleep(delay)
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)  # the run and its worker processes
            run.wait()
            killed += 1
        assert output.read_bytes() in (whole["0.1"], whole["1.0"])  # one whole result, never a part
        if output.read_bytes() == whole["1.0"]:
            assert _select(corpus, output, "0.1", env).wait() == 0
    assert killed
    again = _select(corpus, output, "0.1", env)
    assert again.wait() == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.jsonl")]


def test_image_paths_that_leave_the_corpus_are_dropped_and_reported(tmp_path: Path) -> None:
    """`/etc/hostname` or `../../../etc/passwd` as a rollout's image: stepwise formats drop the rollout with a
    located reason unless --allow-outside-images; the reference format keeps its bytes."""
    from mprm_hf.selection.subset import build_subset

    annotations = tmp_path / "corpus" / "annotations"
    annotations.mkdir(parents=True)
    lines = [
        {
            "image": image,
            "question": "q",
            "steps_with_score": [{"step": "s", "score": 0.5}, {"step": "t", "score": 0.0}],
        }
        for image in ("a/1.png", "/etc/hostname", "../../../etc/passwd", "b/../c/2.png")
    ]
    (annotations / "src.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = build_subset(
        tmp_path / "corpus", tmp_path / "s.jsonl", method="full", use_cache=False, progress=False
    )
    kept = [json.loads(line)["id"] for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert kept == ["src:1", "src:4"]
    assert any(
        "outside the corpus folder (stepwise formats): 2 (src.jsonl:2, src.jsonl:3)" in note
        for note in result.report.notes
    )
    allowed = build_subset(tmp_path / "corpus", tmp_path / "a.jsonl", method="full", use_cache=False,
                           progress=False, allow_outside_images=True)  # fmt: skip
    assert allowed.n_written == 4
    reference = build_subset(tmp_path / "corpus", tmp_path / "r.jsonl", fmt="reference", alpha=0.2, top_ratio=1.0,
                             use_cache=False, progress=False)  # fmt: skip
    assert reference.n_written == 4


def _rollout(image: str = "a.png") -> dict:
    return {
        "image": image,
        "question": "q",
        "steps_with_score": [{"step": "s", "score": 0.5}, {"step": "t", "score": 0.0}],
    }


def test_every_line_of_a_reference_selection_is_counted(tmp_path: Path, capsys) -> None:
    """An 11-line file with a truncated line, a BOM line and a blank line: the bytes are the reference's
    (those lines are not ranked) and the report counts each skipped line by reason, with its place."""
    from mprm_hf.cli import main

    annotations = tmp_path / "annotations"
    annotations.mkdir()
    lines = [json.dumps(_rollout(f"{n}.png")) for n in range(8)]
    lines[2] = lines[2][:20]  # truncated
    lines[4] = "\ufeff" + lines[4]  # a byte-order mark
    lines.insert(6, "   ")
    (annotations / "src.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "r.jsonl"
    argv = ["select", "--annotations", str(annotations), "--alpha", "0.2", "--top-ratio", "1.0", "--format",
            "reference", "--output", str(output), "--quiet", "--no-cache"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert output.read_text().count("\n") == 6
    assert "6 / 6" in out
    assert "skipped when scanning, blank line: 1 (src.jsonl:7)" in out
    assert "skipped when scanning, not JSON: 2 (src.jsonl:3, src.jsonl:5)" in out


def test_report_reasons_name_what_happened(tmp_path: Path) -> None:
    """A BOM line is not 'non-standard JSON', a number as question is not a 'missing field', and a steps
    file saved with a BOM does not put it into step 1."""
    from mprm_hf.data import visualprm400k as vp
    from mprm_hf.data import visualprocessbench as vpb
    from mprm_hf.scoring import read_steps_file

    corpus = tmp_path / "corpus" / "annotations"
    corpus.mkdir(parents=True)
    (corpus / "src.jsonl").write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps(_rollout()).encode()
        + b"\n"
        + json.dumps(_rollout("b.png")).encode()
        + b"\n"
    )
    ds, report = vp.load_visualprm400k(tmp_path / "corpus", cache_dir=tmp_path / "cache")
    assert len(ds) == 1 and report.count(vp.BOM) == 1 and report.count(vp.NON_STANDARD_JSON) == 0
    bench = tmp_path / "bench"
    bench.mkdir()
    record = {
        "question": 123,
        "image": [],
        "response": {"steps": ["a"], "process_correctness": [1]},
        "data_source": "S",
    }
    (bench / "test.jsonl").write_text(json.dumps(record) + "\n")
    _, bench_report = vpb.load_visualprocessbench(bench)
    assert bench_report.count(vpb.WRONG_TYPE) == 1
    assert not [
        e for e in bench_report.examples if e.field == "question" and e.reason == vpb.MISSING_OPTIONAL
    ]
    steps = tmp_path / "steps.txt"
    steps.write_bytes(b"\xef\xbb\xbfFirst step.\n\nSecond step.\n")
    assert read_steps_file(steps) == ["First step.", "Second step."]
