"""How fast the synthetic world is written: one process (the baseline) against two, and the cost of pictures.

    .venv/bin/python benchmarks/bench_synth.py [--rollouts 565149]

Prints seconds, rollouts per second and the ratio of each run to the one-process run without pictures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mprm_hf.data.synthetic import write_synthetic
from mprm_hf.data.synthetic_sources import FULL_SIZE_ROLLOUTS


def timed(out: Path, rollouts: int, *, workers: int, images: bool) -> float:
    started = time.perf_counter()
    write_synthetic(out, rollouts=rollouts, benchmark_traces=300, seed=0, images=images, workers=workers)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=100_000)
    args = parser.parse_args()
    runs = [
        ("1 process, no pictures (baseline)", 1, False),
        ("2 processes, no pictures", 2, False),
        ("2 processes, pictures", 2, True),
    ]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, workers, images) in enumerate(runs):
            results.append(
                (name, timed(Path(tmp) / str(index), args.rollouts, workers=workers, images=images))
            )
    baseline = results[0][1]
    print(f"{args.rollouts:,} rollouts + 300 benchmark traces")
    for name, seconds in results:
        print(
            f"  {name:<36} {seconds:7.1f} s  {args.rollouts / seconds:>9,.0f} rollouts/s  "
            f"x{baseline / seconds:.2f} vs baseline"
        )
    fastest = min(seconds for name, seconds in results if "no pictures" in name)
    print(
        f"  full size ({FULL_SIZE_ROLLOUTS:,}) without pictures, extrapolated: {fastest * FULL_SIZE_ROLLOUTS / args.rollouts:.0f} s"
    )


if __name__ == "__main__":
    main()
