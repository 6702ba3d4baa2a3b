"""Best-of-N pool scoring speed: every candidate in length-sorted batches against one pass per candidate.

A best-of-N harness built the obvious way scores a question's candidates one at a time. `mprm-hf bon`
scores all candidates of all questions together (`mprm_hf.rerank.score_candidates`: one forward pass per
candidate, `--batch-size` candidates per pass, sorted by length so batches pad little). This benchmark
writes a synthetic pool, times both on it, checks that they give the same rewards, and prints candidates/s
and the ratio in one run; it also times a second evaluation (another N and aggregate) from the rewards the
harness cached, which needs no forward pass.

    python benchmarks/bench_bon.py                              # tiny model, CPU
    python benchmarks/bench_bon.py --questions 64 --candidates 16 --batch-size 32
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mprm_hf.bon import run_bon
from mprm_hf.data.bon_pool import load_pool
from mprm_hf.data.synthetic import BON_DIR, write_bon_pool
from mprm_hf.modeling import build_tiny_model, count_parameters, load_model_and_processor
from mprm_hf.rerank import score_candidates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32, help="pool questions")
    parser.add_argument("--candidates", type=int, default=16, help="candidates per question (K)")
    parser.add_argument("--batch-size", type=int, default=16, help="candidates per pass, batched row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best time counts")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_bon_pool(root, args.questions, args.candidates, seed=args.seed)
        pool = load_pool(root / BON_DIR)
        model_dir = build_tiny_model(root / "tiny", arch="qwen2_vl", seed=0)
        model, processor = load_model_and_processor(model_dir)
        questions = [
            {**record, "images": [str(pool.root / image) for image in record["images"]]}
            for record in pool.records
        ]
        n_candidates = sum(len(record["candidates"]) for record in questions)
        n_steps = sum(len(option["steps"]) for record in questions for option in record["candidates"])

        def per_candidate() -> list[list[float]]:
            return [
                score_candidates(
                    model, processor, [{**record, "candidates": [option]}], batch_size=1, progress=False
                )[0][0]
                for record in questions
                for option in record["candidates"]
            ]

        def batched() -> list[list[list[float]]]:
            return score_candidates(model, processor, questions, batch_size=args.batch_size, progress=False)

        batched()  # warm-up (allocator, kernels), not timed
        methods = {"per_candidate": per_candidate, "batched": batched}
        best = dict.fromkeys(methods, float("inf"))
        rewards: dict[str, Any] = {}
        for _ in range(args.repeats):
            for name, method in methods.items():
                started = time.perf_counter()
                rewards[name] = method()
                best[name] = min(best[name], time.perf_counter() - started)
        one = np.concatenate(rewards["per_candidate"])
        many = np.concatenate([trace for question in rewards["batched"] for trace in question])
        difference = float(np.abs(one - many).max())

        run_bon([str(model_dir)], pool.root, None, n_values=[1, 4], aggregates=["mean"], progress=False)
        started = time.perf_counter()
        run_bon([str(model_dir)], pool.root, None, n_values=[2, 8], aggregates=["min"], progress=False)
        cached_seconds = time.perf_counter() - started

    device = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(
        f"model: tiny ({count_parameters(model) / 1e6:.1f}M parameters), device: {device}\n"
        f"pool: {args.questions} questions x {args.candidates} candidates = {n_candidates} candidates "
        f"({n_steps / n_candidates:.1f} steps each); best of {args.repeats} interleaved rounds\n"
    )
    rows = [
        ("one pass per candidate, one question at a time (batch 1)", best["per_candidate"]),
        (f"score_candidates, all questions together (batch {args.batch_size})", best["batched"]),
    ]
    for label, seconds in rows:
        print(f"{label:<66} {seconds:7.2f} s  {n_candidates / seconds:8.1f} candidates/s")
    print(f"\nbatched / per candidate: {best['per_candidate'] / best['batched']:.2f}x candidates/s")
    print(f"largest reward difference between the two: {difference:.2e}")
    print(f"a new N and aggregate from the cached rewards (1000 bootstrap draws): {cached_seconds:.2f} s")


if __name__ == "__main__":
    main()
