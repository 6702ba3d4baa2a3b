"""Selection speed and memory against the reference's approach, printed as ratios in one run.

Baseline: the reference's algorithm as published (read each annotation file whole, `json.loads` every
line, score it in Python, sort, convert the kept ones with `json.dumps`). Ours: `mprm-hf select` through
the CLI (a fresh process: interpreter start-up and imports included, output written), cold (an empty
cache: the corpus is scanned) and warm (a new alpha, ratio, method or format on the cached scan), for
every output format and several selectors, on a clean synthetic corpus and on an edge-case copy of it
(malformed lines, blank lines, numeric strings and null scores, exact ties). Wall time, CPU time (the
whole tree, getrusage) and peak memory (the largest single process's RSS from getrusage, and the whole
process tree's RSS and PSS summed from /proc/PID/smaps_rollup, sampled every 20 ms) are measured from
outside. Before each run the corpus is read once (so it is in the page cache) and the run's output
removed. Every `--format reference` output must be byte-identical to the baseline's, and every other
format must keep as many rollouts as the reference output of the same selection, or the benchmark fails.
Three runs are then repeated in a driver that times their phases from inside the process (imports, scan or
cached table, select, convert + write, report): where the time goes, and the warm path's floor (the cost
of converting and writing the kept rows).

    python benchmarks/bench_selection.py [--corpus /tmp/mprm_bench_corpus] [--rollouts 565149]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
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


def measure(
    command: list[str],
    output: Path,
    files: Sequence[Path],
    env: dict[str, str],
    cache: Path,
    cold: bool = False,
) -> dict[str, float]:
    """One unsampled run for the times, one sampled run for the tree's memory; a cold run starts from an
    empty cache each time."""
    measured = []
    for sample in (False, True):
        if cold:
            shutil.rmtree(cache, ignore_errors=True)
        if output.is_dir():
            shutil.rmtree(output)
        output.unlink(missing_ok=True)
        measured.append(timed(command, {**env, "HF_DATASETS_CACHE": str(cache)}, files, sample))
    return {**measured[0], **{key: measured[1][key] for key in MEMORY_KEYS[1:]}}


BIS_10 = ["--alpha", "0.2", "--top-ratio", "0.1"]
RANDOM_10 = ["--method", "random", "--top-ratio", "0.1"]
NEW_ALPHA = ["--alpha", "0.1", "--top-ratio", "0.1"]  # the baseline's time does not depend on alpha

SPLIT = r"""
import contextlib, io, json, sys, time
start = time.perf_counter()
from mprm_hf.selection import cli, subset
imported = time.perf_counter()
phases = {}
def timed(name, function):
    def run(*args, **kwargs):
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - began
    return run
for name, attribute in [("scan or cached table", "scan_corpus"), ("select", "select_rows"),
                        ("convert + write", "write_subset"), ("report", "build_report")]:
    setattr(subset, attribute, timed(name, getattr(subset, attribute)))
with contextlib.redirect_stdout(io.StringIO()):
    cli.main(sys.argv[1:])
phases["total in process"] = time.perf_counter() - start
phases["imports"] = imported - start
print(json.dumps(phases))
"""
"""Where a run's time goes, from inside the process (interpreter start-up is the rest of the wall time)."""
SPLIT_RUNS = [("cold", "reference", BIS_10), ("cold", "jsonl", RANDOM_10), ("warm", "jsonl", NEW_ALPHA)]

EDGE_EVERY = 53
"""In the edge-case corpus, one line in EDGE_EVERY is replaced by one of the cases below (in turn)."""


def edge_case_corpus(clean: Path, out: Path) -> Path:
    """A copy of the clean corpus with malformed lines (truncated JSON, a blank line, a JSON array),
    numeric strings and null scores, and exact ties (a rollout repeated): every kind of line the scan
    must take the careful path for."""
    annotations = out / "annotations"
    if any(annotations.glob("*.jsonl")):
        return annotations
    annotations.mkdir(parents=True, exist_ok=True)
    for path in sorted((clean / "annotations").glob("*.jsonl")):
        with path.open("rb") as source, (annotations / path.name).open("wb") as sink:
            previous = b""
            for number, line in enumerate(source):
                case = (number // EDGE_EVERY) % 5 if number % EDGE_EVERY == EDGE_EVERY - 1 else -1
                if case == 0:
                    line = line[: len(line) // 2] + b"\n"  # truncated
                elif case == 1:
                    line = b"   \n"
                elif case == 2:
                    line = line.replace(b'"score": 0.', b'"score": "0.', 1).replace(
                        b', "num_mc_correct"', b'", "num_mc_correct"', 1
                    )
                elif case == 3:
                    line = line.replace(b'"score": 1.0', b'"score": null', 1)
                elif case == 4 and previous:
                    line = previous  # an exact tie
                sink.write(line)
                previous = line
    return annotations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "mprm_bench_corpus")
    parser.add_argument("--rollouts", type=int, default=565_149)
    parser.add_argument("--num-proc", type=int, default=2)
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # an installed package has its bytecode; with PYTHONDONTWRITEBYTECODE set, a checkout would not
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO_ROOT / "mprm_hf")], check=True)
    clean = ensure_corpus(args.corpus, args.rollouts, env)
    corpora = {
        "clean": clean,
        "edge cases": edge_case_corpus(args.corpus, args.corpus.with_name(args.corpus.name + "_edge")),
    }
    with tempfile.TemporaryDirectory(prefix="bench-selection-") as scratch_dir:
        scratch = Path(scratch_dir)
        baseline_script = scratch / "baseline.py"
        baseline_script.write_text(BASELINE)
        tables = []
        for name, annotations in corpora.items():
            files = sorted(annotations.glob("*.jsonl"))
            size = sum(path.stat().st_size for path in files)

            warm = scratch / f"warm-{name}"
            shutil.rmtree(warm, ignore_errors=True)
            base = {}
            for alpha, ratio in (("0.2", "0.1"), ("0.05", "0.25")):
                output = scratch / f"baseline_{alpha}_{ratio}.jsonl"
                command = [sys.executable, str(baseline_script), str(annotations), alpha, ratio, str(output)]
                base[alpha, ratio] = measure(command, output, files, env, warm), output
            plan = [  # (label, state, baseline key, format, method flags)
                ("bis 10% a=0.2, reference", "cold", ("0.2", "0.1"), "reference", BIS_10),
                ("bis 10% a=0.2, jsonl", "cold", ("0.2", "0.1"), "jsonl", BIS_10),
                ("random 10%, jsonl", "cold", ("0.2", "0.1"), "jsonl", RANDOM_10),
                ("random 10%, parquet", "cold", ("0.2", "0.1"), "parquet", RANDOM_10),
                ("mixed 10%, arrow", "cold", ("0.2", "0.1"), "arrow", ["--method", "mixed", "--top-ratio", "0.1"]),
                ("prime the warm cache", "prime", None, "jsonl", BIS_10),
                ("bis 10% a=0.1 (a new alpha), jsonl", "warm", ("0.2", "0.1"), "jsonl", NEW_ALPHA),
                ("bis 25% a=0.05, reference", "warm", ("0.05", "0.25"), "reference",
                 ["--alpha", "0.05", "--top-ratio", "0.25"]),
                ("reliable 10%, jsonl", "warm", ("0.2", "0.1"), "jsonl", ["--method", "reliable", "--top-ratio", "0.1"]),
                ("low-mc 10%, parquet", "warm", ("0.2", "0.1"), "parquet", ["--method", "low-mc", "--top-ratio", "0.1"]),
                ("random 10%, arrow", "warm", ("0.2", "0.1"), "arrow", RANDOM_10),
            ]  # fmt: skip
            rows = []
            for label, state, key, fmt, flags in plan:
                output = scratch / f"ours.{fmt}"
                command = [sys.executable, "-m", "mprm_hf.cli", "select", "--annotations", str(annotations),
                           *flags, "--format", fmt, "--output", str(output), "--num-proc", str(args.num_proc),
                           "--quiet"]  # fmt: skip
                if state == "prime":
                    subprocess.run(
                        command,
                        env={**env, "HF_DATASETS_CACHE": str(warm)},
                        check=True,
                        stdout=subprocess.DEVNULL,
                    )
                    continue
                fast = measure(
                    command,
                    output,
                    files,
                    env,
                    scratch / "cold" if state == "cold" else warm,
                    state == "cold",
                )
                reference_output = base[key][1]
                if fmt == "reference" and output.read_bytes() != reference_output.read_bytes():
                    raise SystemExit(f"{name}, {label}: output differs from the baseline's")
                rows.append((f"{state}: {label}", base[key][0], fast))
            splits = []
            for state, fmt, flags in SPLIT_RUNS if name == "clean" else []:
                cache = scratch / "split-cold" if state == "cold" else warm
                shutil.rmtree(scratch / "split-cold", ignore_errors=True)
                settle(files)
                command = [sys.executable, "-c", SPLIT, "--annotations", str(annotations), *flags, "--format", fmt,
                           "--output", str(scratch / f"split.{fmt}"), "--num-proc", str(args.num_proc), "--quiet"]  # fmt: skip
                began = time.perf_counter()
                done = subprocess.run(command, env={**env, "HF_DATASETS_CACHE": str(cache)}, check=True,
                                      capture_output=True, text=True)  # fmt: skip
                wall = time.perf_counter() - began
                splits.append((f"{state}: {' '.join(flags)} --format {fmt}", wall, json.loads(done.stdout)))
            tables.append((name, size, rows, splits))

    print(f"\n{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, num_proc={args.num_proc}; every "
          "reference output byte-identical to the baseline's")  # fmt: skip
    for name, size, rows, splits in tables:
        print(f"\n{name} corpus ({size / 2**20:.0f} MiB)")
        print(f"{'run':<44} {'wall s base/ours':>17} {'speed-up':>9} {'CPU s base/ours':>16}   "
              f"{'peak MiB base/ours: largest RSS':>31} {'tree RSS':>13} {'tree PSS':>13}")  # fmt: skip
        for label, base, fast in rows:
            memory = "".join(f" {base[key]:>6.0f} / {fast[key]:<5.0f}" for key in MEMORY_KEYS)
            print(
                f"{label:<44} {base['wall']:>7.2f} / {fast['wall']:<7.2f} {base['wall'] / fast['wall']:>8.1f}x "
                f"{base['cpu']:>7.2f} / {fast['cpu']:<7.2f}  {' ' * 16}{memory}"
            )
        if splits:
            keys = [
                "imports",
                "scan or cached table",
                "select",
                "convert + write",
                "report",
                "total in process",
            ]
            print(f"\ntime split (s; wall minus 'total in process' is interpreter start-up and exit)\n{'run':<58}"
                  f"{'wall':>6}" + "".join(f"{key:>22}" for key in keys))  # fmt: skip
            for label, wall, phases in splits:
                print(f"{label:<58}{wall:>6.2f}" + "".join(f"{phases.get(key, 0.0):>22.3f}" for key in keys))


if __name__ == "__main__":
    main()
