"""Selection speed and memory against the reference's approach, printed as ratios in one run.

Baseline: the reference's algorithm as published (read each annotation file whole, `json.loads` every
line, score it in Python, sort, convert the kept ones with `json.dumps`). Ours: `mprm-hf select
--format reference` cold (no score cache) and warm (cached score table, a new alpha and ratio). Every
run is a fresh subprocess; wall time and peak memory (resident set of the whole process tree, sampled,
and the largest single process from getrusage) are measured from outside. The outputs must be
byte-identical, or the benchmark fails.

    python benchmarks/bench_selection.py [--corpus /tmp/mprm_bench_corpus] [--rollouts 565149]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent

BASELINE = r'''
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
'''


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Run `command` under a wrapper that reports getrusage (self + children) maxrss, plus tree sampling."""
    wrapper = [
        sys.executable,
        "-c",
        "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)",
        *command,
    ]
    start = time.perf_counter()
    process = subprocess.Popen(wrapper, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(process.pid)
    peak_tree = 0
    while process.poll() is None:
        try:
            members = root.children(recursive=True)
            peak_tree = max(peak_tree, sum(member.memory_info().rss for member in members))
        except psutil.Error:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - start
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{stderr.decode()[-3000:]}")
    largest_kib = int(stderr.decode().strip().splitlines()[-1])
    return wall, peak_tree / 2**20, largest_kib / 1024


def ensure_corpus(corpus: Path, rollouts: int, env: dict[str, str]) -> Path:
    annotations = corpus / "annotations"
    if not any(annotations.glob("*.jsonl")):
        print(f"generating a {rollouts}-rollout synthetic corpus without images in {corpus} ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "mprm_hf.cli", "synth", "--out", str(corpus), "--rollouts", str(rollouts), "--no-images"],
            env=env,
            check=True,
        )
    return annotations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "mprm_bench_corpus")
    parser.add_argument("--rollouts", type=int, default=565_149)
    parser.add_argument("--num-proc", type=int, default=2)
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    annotations = ensure_corpus(args.corpus, args.rollouts, env)
    size = sum(path.stat().st_size for path in annotations.glob("*.jsonl"))
    with tempfile.TemporaryDirectory(prefix="bench-selection-") as scratch_dir:
        scratch = Path(scratch_dir)
        env["HF_DATASETS_CACHE"] = str(scratch / "hf_cache")  # a cold cache, owned by this run
        rows = []

        def ours(alpha: str, ratio: str, output: Path) -> list[str]:
            return [sys.executable, "-m", "mprm_hf.cli", "select", "--annotations", str(annotations),
                    "--method", "bis", "--alpha", alpha, "--top-ratio", ratio, "--format", "reference",
                    "--output", str(output), "--num-proc", str(args.num_proc), "--quiet"]  # fmt: skip

        baseline_script = scratch / "baseline.py"
        baseline_script.write_text(BASELINE)
        for label, alpha, ratio in (("10% alpha 0.2", "0.2", "0.1"), ("25% alpha 0.05", "0.05", "0.25")):
            reference_out = scratch / f"baseline_{ratio}.jsonl"
            base = timed([sys.executable, str(baseline_script), str(annotations), alpha, ratio, str(reference_out)], env)
            phase = "cold" if not rows else "warm"
            ours_out = scratch / f"ours_{ratio}.jsonl"
            fast = timed(ours(alpha, ratio, ours_out), env)
            if ours_out.read_bytes() != reference_out.read_bytes():
                raise SystemExit(f"{label}: output differs from the baseline's")
            rows.append((label, phase, base, fast))

    print(f"\ncorpus: {args.corpus} ({size / 2**20:.0f} MiB), cpu cores: {os.cpu_count()}, num_proc={args.num_proc}")
    print(f"{'subset':<16} {'run':<5} {'baseline s':>11} {'ours s':>8} {'speed-up':>9}   "
          f"{'tree MiB base/ours':>19} {'largest proc MiB base/ours':>27}")  # fmt: skip
    for label, phase, base, fast in rows:
        print(
            f"{label:<16} {phase:<5} {base[0]:>11.2f} {fast[0]:>8.2f} {base[0] / fast[0]:>8.1f}x   "
            f"{base[1]:>8.0f} / {fast[1]:<8.0f} {base[2]:>13.0f} / {fast[2]:<8.0f}"
        )
    print(json.dumps({label + " " + phase: {"speedup": base[0] / fast[0]} for label, phase, base, fast in rows}))


if __name__ == "__main__":
    main()
