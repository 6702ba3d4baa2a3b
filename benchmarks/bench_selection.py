"""Selection speed and memory against the reference's approach, printed as ratios in one run.

Baseline: the reference's algorithm as published (read each annotation file whole, `json.loads` every
line, score it in Python, sort, convert the kept ones with `json.dumps`). Ours: `mprm-hf select
--format reference` cold (no cache) and warm (a new alpha and ratio from the cache), with the default
cache (the score table) and with `--cache-records` (score table + converted records); warm runs
both through the CLI (a fresh process: interpreter start-up and imports included) and in a process
that already imported `mprm_hf`. CLI runs are fresh subprocesses; wall time, CPU time (the whole
tree, getrusage) and peak memory (the largest single process's RSS from getrusage, and the whole
process tree's RSS and PSS summed from /proc/PID/smaps_rollup, sampled every 20 ms) are measured from
outside. Before each run the corpus is read once (so it is in the page cache) and the run's output
file removed (so every run creates it). The outputs must be byte-identical, or the benchmark fails.

    python benchmarks/bench_selection.py [--corpus /tmp/mprm_bench_corpus] [--rollouts 565149]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent

BASELINE = r"""
import json, sys
from pathlib import Path

def scores_of(record):
    out = []
    for step in record.get("steps_with_score") or []:
        value = step.get("score")
        if value is None:
            continue
        try:
            out.append(float(value))
        except (TypeError, ValueError):
            continue
    return out

def convert(record):
    image = record.get("image", "")
    steps = record.get("steps_with_score") or []
    if not image or not steps:
        return None
    texts, labels = [], []
    for step in steps:
        text = (step.get("step") or "").strip()
        value = step.get("score")
        if not text or value is None:
            return None
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        texts.append(text + "<prm>")
        labels.append(1.0 if value > 0.0 else 0.0)
    question = str(record.get("question_orig") or record.get("question") or "").strip()
    human = {"from": "human", "value": f"Question: {question}\nProcess: " + "\n\n".join(texts)}
    return {"image": image, "conversations": [human, {"from": "gpt", "value": labels}]}

annotations, alpha, ratio, output = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
with output.open("w", encoding="utf-8") as sink:
    for path in sorted(annotations.glob("*.jsonl")):
        with path.open("r", encoding="utf-8") as handle:
            lines = handle.readlines()
        ranked = []
        for index, line in enumerate(lines):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            scores = scores_of(record)
            if not scores:
                continue
            positives = [s for s in scores if s > 0.0]
            p_pos = len(positives) / len(scores)
            reliability = sum(positives) / len(positives) if positives else 1.0
            ranked.append((index, (p_pos * (1.0 - p_pos) + alpha) * reliability))
        if not ranked:
            continue
        ranked.sort(key=lambda pair: pair[1], reverse=True)
        top_k = max(1, int(len(ranked) * ratio))
        for index in sorted(index for index, _ in ranked[:top_k]):
            converted = convert(json.loads(lines[index].strip()))
            if converted is not None:
                sink.write(json.dumps(converted, ensure_ascii=False) + "\n")
"""


def tree_memory(root: psutil.Process) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over `root`'s descendants, from smaps_rollup (cheap enough to sample
    often without stealing a core from the run being measured, unlike a full smaps walk)."""
    rss = pss = 0
    for member in root.children(recursive=True):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member.pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
    return rss, pss


MEMORY_KEYS = ("largest_mib", "tree_rss_mib", "tree_pss_mib")
SETTLE_SECONDS = 3.0
"""Pause before each measured run: the run before it (a cold scan writes ~650 MiB of cache) leaves
the kernel busy for a moment, which would otherwise be billed to whichever run comes next."""


def settle(corpus: Sequence[Path]) -> None:
    """Before each measured run: pause (see SETTLE_SECONDS), then read the corpus once, so every run,
    the baseline's included, finds it in the page cache (this machine reclaims it between runs, and the
    disk's speed is not what is compared; docs/selection.md also gives a run from a dropped cache)."""
    time.sleep(SETTLE_SECONDS)
    for path in corpus:
        with path.open("rb") as handle:
            while handle.read(1 << 24):
                pass


def timed(
    command: list[str], env: dict[str, str], corpus: Sequence[Path], sample: bool = False
) -> dict[str, float]:
    """Run `command`; wall seconds, CPU seconds (user + sys of the whole tree, from getrusage), the
    largest single process's peak RSS (getrusage) and, with `sample`, the tree's peak RSS and PSS.

    Sampling walks /proc every 20 ms, which takes CPU from a run that uses both cores (and not from
    the one-core baseline), so timings come from runs without it and tree memory from a run with it."""
    wrapper = [
        sys.executable,
        "-c",
        "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]);"
        "usage = resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(usage.ru_maxrss, usage.ru_utime + usage.ru_stime, file=sys.stderr); sys.exit(code)",
        *command,
    ]
    settle(corpus)
    start = time.perf_counter()
    process = subprocess.Popen(wrapper, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(process.pid)
    peak_rss = peak_pss = 0
    while sample and process.poll() is None:
        with contextlib.suppress(psutil.Error):
            rss, pss = tree_memory(root)  # PSS: pages shared by forked workers count once, split
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.02)
    process.wait()
    wall = time.perf_counter() - start
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{stderr.decode()[-3000:]}")
    largest_kib, cpu = stderr.decode().strip().splitlines()[-1].split()
    return {
        "wall": wall,
        "cpu": float(cpu),
        "largest_mib": int(largest_kib) / 1024,
        "tree_rss_mib": peak_rss / 2**20 if sample else float("nan"),
        "tree_pss_mib": peak_pss / 2**20 if sample else float("nan"),
    }


def ensure_corpus(corpus: Path, rollouts: int, env: dict[str, str]) -> Path:
    annotations = corpus / "annotations"
    if not any(annotations.glob("*.jsonl")):
        print(f"generating a {rollouts}-rollout synthetic corpus without images in {corpus} ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "mprm_hf.cli", "synth", "--out", str(corpus), "--rollouts", str(rollouts),
             "--benchmark-traces", "10", "--no-images"],
            env=env,
            check=True,
        )  # fmt: skip
    return annotations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "mprm_bench_corpus")
    parser.add_argument("--rollouts", type=int, default=565_149)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument(
        "--repeat", type=int, default=1, help="run everything N times; show each run's fastest wall time"
    )
    args = parser.parse_args()

    def best(run: Callable[..., tuple[dict[str, float], Path]], fresh: Path | None = None):  # noqa: ANN202
        """The fastest of `--repeat` unsampled runs, then one run sampling the tree's memory (a cold run
        starts each time from an empty `fresh` cache); memory is the largest seen over all of them."""
        results = []
        for sample in [False] * args.repeat + [True]:
            if fresh is not None:
                shutil.rmtree(fresh, ignore_errors=True)
            results.append(run(sample))
        timing, output = min(results[:-1], key=lambda result: result[0]["wall"])
        memory = {
            key: max(
                (result[0][key] for result in results if result[0][key] == result[0][key]), default=math.nan
            )
            for key in MEMORY_KEYS
        }
        return {**timing, **memory}, output

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # an installed package has its bytecode; with PYTHONDONTWRITEBYTECODE set, a checkout would not
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO_ROOT / "mprm_hf")], check=True)
    annotations = ensure_corpus(args.corpus, args.rollouts, env)
    corpus = sorted(annotations.glob("*.jsonl"))
    size = sum(path.stat().st_size for path in corpus)
    with tempfile.TemporaryDirectory(prefix="bench-selection-") as scratch_dir:
        scratch = Path(scratch_dir)
        baseline_script = scratch / "baseline.py"
        baseline_script.write_text(BASELINE)

        def baseline(alpha: str, ratio: str, sample: bool) -> tuple[dict[str, float], Path]:
            output = scratch / f"baseline_{alpha}_{ratio}.jsonl"
            output.unlink(missing_ok=True)  # every run creates its output (replacing one costs a flush)
            return timed(
                [sys.executable, str(baseline_script), str(annotations), alpha, ratio, str(output)],
                env,
                corpus,
                sample,
            ), output

        def ours(
            alpha: str, ratio: str, cache: Path, sample: bool, *extra: str
        ) -> tuple[dict[str, float], Path]:
            output = scratch / f"ours_{alpha}_{ratio}.jsonl"
            output.unlink(missing_ok=True)
            command = [sys.executable, "-m", "mprm_hf.cli", "select", "--annotations", str(annotations),
                       "--method", "bis", "--alpha", alpha, "--top-ratio", ratio, "--format", "reference",
                       "--output", str(output), "--num-proc", str(args.num_proc), "--quiet", *extra]  # fmt: skip
            return timed(command, {**env, "HF_DATASETS_CACHE": str(cache)}, corpus, sample), output

        def in_process(
            alpha: float, ratio: float, cache: Path, cache_records: bool, sample: bool
        ) -> tuple[dict[str, float], Path]:
            """A new alpha/ratio in a Python process that already imported mprm_hf (a notebook, a sweep)."""
            from mprm_hf.selection.reference import build_reference_subset

            output = scratch / f"in_process_{alpha}_{ratio}.jsonl"
            output.unlink(missing_ok=True)
            settle(corpus)
            start, cpu_start = time.perf_counter(), time.process_time()
            build_reference_subset(annotations, output, alpha=alpha, top_ratio=ratio, num_proc=args.num_proc,
                                   cache_dir=cache / "mprm_hf_reference_scores", cache_records=cache_records,
                                   progress=False)  # fmt: skip
            timing = {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu_start}
            memory = dict.fromkeys(MEMORY_KEYS, float("nan"))
            return {**timing, **memory}, output

        baselines = {
            key: best(lambda sample, key=key: baseline(*key, sample))
            for key in (("0.2", "0.1"), ("0.05", "0.25"), ("0.1", "0.1"))
        }
        runs = []
        for mode, flags, records in (
            ("default", (), False),
            ("--cache-records", ("--cache-records",), True),
        ):
            cache = scratch / mode.strip("-")
            runs += [
                (
                    f"cold: 10% a=0.2, {mode} (CLI)",
                    ("0.2", "0.1"),
                    lambda sample, c=cache, f=flags: ours("0.2", "0.1", c, sample, *f),
                    cache,
                ),
                (
                    f"warm: 25% a=0.05, {mode} (CLI)",
                    ("0.05", "0.25"),
                    lambda sample, c=cache, f=flags: ours("0.05", "0.25", c, sample, *f),
                    None,
                ),
                (
                    f"warm: 10% a=0.1, {mode} (CLI)",
                    ("0.1", "0.1"),
                    lambda sample, c=cache, f=flags: ours("0.1", "0.1", c, sample, *f),
                    None,
                ),
                (
                    f"warm: 10% a=0.1, {mode} (in process)",
                    ("0.1", "0.1"),
                    lambda sample, c=cache, r=records: in_process(0.1, 0.1, c, r, sample),
                    None,
                ),
            ]
        rows = []
        for label, key, run, fresh in runs:
            fast, output = best(run, fresh)
            base, base_output = baselines[key]
            if output.read_bytes() != base_output.read_bytes():
                raise SystemExit(f"{label}: output differs from the baseline's")
            rows.append((label, base, fast))

    print(f"\ncorpus: {args.corpus} ({size / 2**20:.0f} MiB), {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}, num_proc={args.num_proc}; every output byte-identical to the baseline's")  # fmt: skip
    print(f"{'run':<50} {'wall s base/ours':>17} {'speed-up':>9} {'CPU s base/ours':>16}   "
          f"{'peak MiB base/ours: largest RSS':>31} {'tree RSS':>13} {'tree PSS':>13}")  # fmt: skip
    for label, base, fast in rows:
        memory = "".join(
            f" {base[key]:>6.0f} / {'-' if math.isnan(fast[key]) else f'{fast[key]:.0f}':<5}"
            for key in MEMORY_KEYS
        )  # an in-process run's memory is not measured: its process holds more than the run
        print(
            f"{label:<50} {base['wall']:>7.2f} / {fast['wall']:<7.2f} {base['wall'] / fast['wall']:>8.1f}x "
            f"{base['cpu']:>7.2f} / {fast['cpu']:<7.2f}  {' ' * 16}{memory}"
        )


if __name__ == "__main__":
    main()
