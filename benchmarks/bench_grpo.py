"""Does a PRM reward move a policy's answer accuracy? `recipes/tiny-cpu/grpo.yaml` over several seeds, with
the PRM as the reward (the recipe) and, as the control, the answer's correctness itself as the reward (a
rule-based reward that knows the answer: what GRPO can reach on this policy at best).

Every run goes through `mprm-hf grpo` as a user runs it; the table gives, per reward, mean and standard
deviation over the seeds of: the greedy accuracy on the held-out questions before and after, the accuracy
of the sampled answers over the first and the last fifth of the logging steps, the PRM's mean reward, and
how well the PRM's reward tells the policy's right answers from its wrong ones (AUC, before training).

    python benchmarks/bench_grpo.py [--seeds 0 1 2] [--work /tmp/mprm-grpo] [-- extra `mprm-hf grpo` flags]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mprm_hf.fileio import write_text_atomic  # noqa: E402 - after the environment is set

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny-cpu" / "grpo.yaml"
REWARDS = {"PRM (min of step rewards)": ["--reward_weights", "1.0", "0.0"],
           "control: answer correctness": ["--reward_weights", "0.0", "1.0"]}  # fmt: skip


def run_once(out: Path, seed: int, weights: list[str], extra: list[str]) -> dict:
    from mprm_hf.cli import main

    argv = ["grpo", str(RECIPE), "--output_dir", str(out), "--seed", str(seed), "--disable_tqdm", "true"]
    if main([*argv, *weights, *extra]) != 0:
        raise SystemExit(f"mprm-hf {' '.join(argv)} failed")
    return json.loads((out / "grpo.json").read_text())


def fifths(points: list[list[float]]) -> tuple[float, float]:
    """The mean of the first and of the last fifth of a learning curve's values."""
    values = [value for _, value in points]
    k = max(1, len(values) // 5)
    return sum(values[:k]) / k, sum(values[-k:]) / k


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mprm-grpo"))
    parser.add_argument("extra", nargs="*", help="extra `mprm-hf grpo` flags (after --)")
    args = parser.parse_args()
    rows = {}
    for name, weights in REWARDS.items():
        records = []
        for seed in args.seeds:
            started = time.perf_counter()
            record = run_once(args.work / f"{weights[-1]}-seed{seed}", seed, weights, args.extra)
            record["bench_s"] = time.perf_counter() - started
            records.append(record)
        rows[name] = records

    first = next(iter(rows.values()))[0]
    print(
        f"\n{first['steps']} GRPO steps, {first['num_generations']} samples per question, lr "
        f"{first['learning_rate']:g}; {first['before']['questions']} held-out questions; reward model "
        f"{first['reward_model']}; seeds {args.seeds}; {first['machine']}"
    )
    header = (
        "| reward | held-out accuracy before | after | sampled accuracy, first fifth | last fifth "
        "| PRM reward, after | PRM reward AUC (right vs wrong answers) | s per run |"
    )
    print(header + "\n" + "|---" * (header.count("|") - 1) + "|")
    for name, records in rows.items():
        early, late = zip(*(fifths(r["learning_curve"]["accuracy"]) for r in records), strict=True)
        aucs = [r["before"]["prm_reward_auc"] for r in records if r["before"]["prm_reward_auc"] is not None]
        print(
            f"| {name} | {spread([r['before']['accuracy'] for r in records])} "
            f"| {spread([r['after']['accuracy'] for r in records])} | {spread(list(early))} | {spread(list(late))} "
            f"| {spread([r['after']['prm_reward'] for r in records])} | {spread(aucs) if aucs else '-'} "
            f"| {statistics.mean(r['bench_s'] for r in records):.0f} |"
        )
    summary = {name: [{k: r[k] for k in ("seed", "before", "after", "learning_curve")} for r in records]
               for name, records in rows.items()}  # fmt: skip
    write_text_atomic(args.work / "grpo-bench.json", json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
