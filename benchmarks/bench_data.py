"""Loading speed of VisualPRM400K-v1.1-Raw: `load_visualprm400k` (cold and warm) against two baselines.

Baselines: the reference's reading (Python `json.loads` on every line into a list of dicts: no types,
no checks, nothing cached) and datasets' own json builder (`load_dataset("json")`: typed and cached,
but no per-line report, and one malformed line fails the whole load).

    python benchmarks/bench_data.py --rollouts 565149 [--corpus DIR] [--num-proc 2]

Writes a synthetic corpus of that size without images (or reuses `--corpus`) and prints seconds and
ratios. Caches go to a temporary folder, so "cold" is really cold.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def reference_read(root: Path) -> int:
    """What the reference scripts do: json.loads per stripped line, files in sorted order."""
    rows = []
    for path in sorted((root / "annotations").glob("*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if line:
                    rows.append(json.loads(line))
    return len(rows)


def _time_json_builder(files: list[Path], cache: Path) -> tuple[str, float]:
    """datasets' json builder cannot type `image` (a string in 37 files, a list in nlvr2): time it without."""
    import datasets

    try:
        seconds, _ = _timed(
            lambda: datasets.load_dataset(
                "json", data_files=[str(f) for f in files], split="train", cache_dir=str(cache)
            )
        )
        return "datasets json builder, cold (no report)", seconds
    except datasets.exceptions.DatasetGenerationError:
        print("datasets json builder fails on the whole corpus (image: string in most files, list in nlvr2)")
    rest = [str(f) for f in files if not f.stem.startswith("nlvr2")]
    seconds, _ = _timed(
        lambda: datasets.load_dataset("json", data_files=rest, split="train", cache_dir=str(cache))
    )
    return f"datasets json builder, cold ({len(rest)} files, no nlvr2)", seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_data", description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=565_149)
    parser.add_argument("--corpus", type=Path, default=None, help="an existing corpus to read instead")
    parser.add_argument("--num-proc", type=int, default=None)
    args = parser.parse_args(argv)

    import datasets

    from mprm_hf.data.visualprm400k import load_visualprm400k

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.corpus
        if root is None:
            from mprm_hf.data.synthetic import write_synthetic

            root = Path(tmp) / "corpus"
            seconds, _ = _timed(
                lambda: write_synthetic(
                    root, rollouts=args.rollouts, benchmark_traces=10, seed=0, images=False
                )
            )
            print(f"synthetic corpus: {args.rollouts:,} rollouts written in {seconds:.1f} s")
        cache = Path(tmp) / "cache"
        ref_s, n_ref = _timed(lambda: reference_read(root))
        files = sorted((root / "annotations").glob("*.jsonl"))
        json_label, json_s = _time_json_builder(files, cache / "json")
        cold_s, (ds, report) = _timed(
            lambda: load_visualprm400k(root, cache_dir=cache, num_proc=args.num_proc)
        )
        warm_s, (warm, _) = _timed(lambda: load_visualprm400k(root, cache_dir=cache, num_proc=args.num_proc))
        assert len(ds) == len(warm) == n_ref, (len(ds), len(warm), n_ref)

    print(f"rollouts: {len(ds):,}   report: {report.total_issues} problems   num_proc: {args.num_proc or 1}")
    print(f"{'method':<50} {'seconds':>8} {'vs reference':>13}")
    for name, seconds in [
        ("reference: json.loads per line (untyped)", ref_s),
        (json_label, json_s),
        ("load_visualprm400k, cold (typed + report)", cold_s),
        ("load_visualprm400k, warm (Arrow cache)", warm_s),
    ]:
        print(f"{name:<50} {seconds:>8.2f} {ref_s / seconds:>12.2f}x")
    print(f"warm load is {cold_s / warm_s:,.0f}x faster than cold")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
