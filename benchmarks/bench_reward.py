"""What a PRM reward costs GRPO: rewards per second of `PRMReward`, batched, against one completion per call.

A GRPO step asks the reward for every sampled completion of a batch of prompts (`num_generations` per
prompt). `PRMReward` scores every step of a completion in one forward pass and batches completions; the
baseline calls the PRM once per completion (batch 1), as a reward function written around `score_steps`
would. Completions are the synthetic world's candidate solutions (about 4 steps of about 10 words), one
picture each, as GRPO's `image` column gives them. Both give the same rewards (checked).

    python benchmarks/bench_reward.py                      # the tiny PRM's shape (the shipped base), CPU
    python benchmarks/bench_reward.py --model-shape 2b     # Qwen2-VL-2B-shaped, random weights (GPU if any)
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import torch
from bench_scoring import build_model
from PIL import Image

from mprm_hf.data.synthetic import draw_scene, simulate_pool
from mprm_hf.embedded import embedded_base
from mprm_hf.modeling import count_parameters, load_model_and_processor
from mprm_hf.reward import PRMReward


def grpo_batch(n_prompts: int, generations: int, image_size: int) -> dict[str, list[Any]]:
    """`n_prompts` single-picture questions with `generations` candidate completions each."""
    prompts, completions, images = [], [], []
    for question in simulate_pool(n_prompts * 2, generations, seed=0):
        if len(question.scenes) != 1:
            continue
        picture = draw_scene(question.scenes[0]).resize((image_size, image_size), Image.NEAREST)
        for candidate in question.candidates:
            prompts.append([{"role": "user", "content": question.question.text}])
            completions.append([{"role": "assistant", "content": "\n\n".join(candidate["steps"])}])
            images.append(picture)
        if len(prompts) >= n_prompts * generations:
            break
    return {"prompts": prompts, "completions": completions, "image": images}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-shape", choices=["tiny", "2b"], default="tiny")
    parser.add_argument(
        "--prompts", type=int, default=None, help="prompts per GRPO batch (default 16 tiny, 8 2b)"
    )
    parser.add_argument("--generations", type=int, default=8, help="completions per prompt")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32], help="completions per pass")
    parser.add_argument(
        "--image-size", type=int, default=None, help="pixels a side (default 56 tiny, 448 2b)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: float32 tiny, bfloat16 2b")
    parser.add_argument("--step-format", default="visualprm", choices=["prm-token", "visualprm"])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best time counts")
    args = parser.parse_args(argv)
    big = args.model_shape == "2b"
    image_size = args.image_size or (448 if big else 56)
    dtype = getattr(torch, args.dtype or ("bfloat16" if big else "float32"))
    if big:
        model, processor = build_model("2b", args.device, dtype, image_size)
    else:  # the shipped tiny base: a PRM's shape (scoring costs the same whatever the weights)
        model, processor = load_model_and_processor(embedded_base("pretrained"), dtype=dtype)
    batch = grpo_batch(args.prompts or (8 if big else 16), args.generations, image_size)
    n = len(batch["completions"])

    rewards = {
        size: PRMReward(model, processor, step_format=args.step_format, batch_size=size, device=args.device)
        for size in [1, *args.batch_sizes]
    }
    for reward in rewards.values():  # warm-up, not timed
        reward(**{key: value[:2] for key, value in batch.items()})
    best = dict.fromkeys(rewards, float("inf"))
    values: dict[int, list[float]] = {}
    for _ in range(args.repeats):
        for size, reward in rewards.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            values[size] = reward(**batch)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[size] = min(best[size], time.perf_counter() - start)
    difference = max(
        abs(a - b) for size in args.batch_sizes for a, b in zip(values[1], values[size], strict=True)
    )

    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    steps = sum(len(c[0]["content"].split("\n\n")) for c in batch["completions"]) / n
    print(
        f"model: {args.model_shape} ({count_parameters(model) / 1e6:.1f}M parameters, {dtype}), device: {device}\n"
        f"one GRPO batch: {n} completions ({args.generations} per prompt, {steps:.1f} steps each, images "
        f"{image_size}x{image_size}), step format {args.step_format}; best of {args.repeats} rounds\n"
    )
    print(f"{'PRMReward':<40} {'seconds':>8} {'rewards/s':>10} {'speed-up':>9}")
    for size, seconds in best.items():
        name = "one completion per pass (baseline)" if size == 1 else f"batched, {size} completions per pass"
        print(f"{name:<40} {seconds:>8.2f} {n / seconds:>10.1f} {best[1] / seconds:>8.2f}x")
    print(f"\nmax |reward difference| batch 1 vs batched: {difference:.2e}")


if __name__ == "__main__":
    main()
