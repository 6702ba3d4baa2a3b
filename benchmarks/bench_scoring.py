"""Scoring speed: one forward pass per trace (mprm_hf.score_traces) against one per step prefix.

Evaluators built for text PRMs (RLHFlow's among them) score a trace of n steps with n forward passes,
the k-th over the prefix that ends at step k, keeping only the last step's reward. A PRM with a marker
after every step reads all n rewards from a single pass. This benchmark times both on traces of
VisualProcessBench's shape (about 9.4 steps of about 26 words, one or two images), checks that they
give the same rewards (the model is causal, so a prefix sees exactly what the full trace shows it),
and prints traces/s and the speed-up in one run.

    python benchmarks/bench_scoring.py                          # tiny model, CPU
    python benchmarks/bench_scoring.py --model-shape 2b         # Qwen2-VL-2B-shaped, random weights, CUDA

`--model-shape 2b` builds a model with Qwen2-VL-2B's dimensions and random weights from a config (no
download) around the tiny tokenizer; the timings of a forward pass do not depend on the weights.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import torch
from PIL import Image

from mprm_hf.data.synthetic import draw_scene, simulate_benchmark
from mprm_hf.modeling import count_parameters, create_tiny_model, qwen2_vl_2b_config
from mprm_hf.scoring import score_traces


def build_model(shape: str, device: str, dtype: torch.dtype, image_size: int) -> tuple[Any, Any]:
    """The tiny PRM, or a model of Qwen2-VL-2B's shape sharing the tiny tokenizer and chat template."""
    model, processor = create_tiny_model(arch="qwen2_vl", seed=0)
    if shape == "tiny":
        return model.to(device=device, dtype=dtype), processor
    from transformers import AutoModelForImageTextToText
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    config = qwen2_vl_2b_config(processor.tokenizer)
    # Real benchmark images are large: let the processor keep `image_size` x `image_size` pixels.
    processor.image_processor = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=image_size * image_size
    )
    torch.manual_seed(0)
    with torch.device(device):
        big = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    return big.eval(), processor


def benchmark_traces(n_traces: int, image_size: int, seed: int) -> list[dict[str, Any]]:
    """Traces of VisualProcessBench's shape from the synthetic benchmark generator, with their pictures."""
    traces = []
    for record in simulate_benchmark(n_traces, seed=seed):
        images = [
            draw_scene(scene).resize((image_size, image_size), Image.NEAREST) for scene in record.scenes
        ]
        traces.append({"question": record.question, "steps": record.steps, "images": images})
    return traces


def prefixes(traces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**trace, "steps": trace["steps"][: k + 1]} for trace in traces for k in range(len(trace["steps"]))
    ]


def timed(fn) -> tuple[Any, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-shape", choices=["tiny", "2b"], default="tiny")
    parser.add_argument("--traces", type=int, default=None, help="traces to time (default: 48 tiny, 64 2b)")
    parser.add_argument("--batch-size", type=int, default=8, help="traces per pass for the batched row")
    parser.add_argument(
        "--image-size", type=int, default=None, help="pixels per side (default: 56 tiny, 448 2b)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: float32 tiny, bfloat16 2b")
    parser.add_argument("--step-format", default="prm-token", choices=["prm-token", "visualprm"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of all three methods; the best time counts"
    )
    args = parser.parse_args(argv)
    big = args.model_shape == "2b"
    n_traces = args.traces or (64 if big else 48)
    image_size = args.image_size or (448 if big else 56)
    dtype = getattr(torch, args.dtype or ("bfloat16" if big else "float32"))

    model, processor = build_model(args.model_shape, args.device, dtype, image_size)
    traces = benchmark_traces(n_traces, image_size, args.seed)
    n_steps = sum(len(t["steps"]) for t in traces)

    def run(items: list[dict[str, Any]], batch_size: int) -> list[list[float]]:
        return score_traces(
            model, processor, items, batch_size=batch_size, step_format=args.step_format, progress=False
        )

    run(prefixes(traces[:2]), 1)  # warm-up (allocator, kernels), not timed
    run(traces[:2], args.batch_size)
    # Interleaved rounds, best time of each: a shared machine's load hits all methods alike.
    methods = {
        "prefix": lambda: run(prefixes(traces), 1),
        "single": lambda: run(traces, 1),
        "batched": lambda: run(traces, args.batch_size),
    }
    best = dict.fromkeys(methods, float("inf"))
    scores: dict[str, list[list[float]]] = {}
    for _ in range(args.repeats):
        for name, method in methods.items():
            scores[name], seconds = timed(method)
            best[name] = min(best[name], seconds)
    prefix_scores, single_scores, batched_scores = scores["prefix"], scores["single"], scores["batched"]
    prefix_seconds, single_seconds, batched_seconds = best["prefix"], best["single"], best["batched"]

    # The prefix method's reward for step k is the last reward of prefix k: it must equal ours.
    last_of_prefix = iter(scores[-1] for scores in prefix_scores)
    difference = max(abs(next(last_of_prefix) - s) for scores in single_scores for s in scores)
    batched_difference = max(
        abs(a - b)
        for one, many in zip(single_scores, batched_scores, strict=True)
        for a, b in zip(one, many, strict=True)
    )

    device_name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(
        f"model: {args.model_shape} ({count_parameters(model) / 1e6:.1f}M parameters, {dtype}), device: {device_name}\n"
        f"traces: {n_traces} ({n_steps / n_traces:.1f} steps per trace, images {image_size}x{image_size}), "
        f"step format: {args.step_format}; best of {args.repeats} interleaved rounds\n"
    )
    rows = [
        ("one pass per step prefix (RLHFlow-style), batch 1", n_steps, prefix_seconds),
        ("one pass per trace (score_traces), batch 1", n_traces, single_seconds),
        (
            f"one pass per trace (score_traces), batch {args.batch_size}",
            -(-n_traces // args.batch_size),
            batched_seconds,
        ),
    ]
    print(f"{'method':<52} {'passes':>7} {'seconds':>8} {'traces/s':>9} {'speed-up':>9}")
    for name, passes, seconds in rows:
        print(
            f"{name:<52} {passes:>7} {seconds:>8.2f} {n_traces / seconds:>9.2f} {prefix_seconds / seconds:>8.2f}x"
        )
    print(
        f"\nmax |reward difference|: prefix vs one pass {difference:.2e}; batch 1 vs batch {args.batch_size} "
        f"{batched_difference:.2e}"
    )


if __name__ == "__main__":
    main()
