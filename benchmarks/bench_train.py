"""Training throughput of PRMTrainer: samples/s and tokens/s, with and without length grouping.

    python benchmarks/bench_train.py                               # tiny Qwen2-VL on the CPU
    python benchmarks/bench_train.py --model-shape qwen2-vl-2b     # Qwen2-VL-2B shape, random weights, GPU

The `qwen2-vl-2b` shape builds Qwen2-VL-2B's architecture from a config (no download) with random weights,
trains it in bf16 with SDPA attention on rollouts of VisualPRM400K's size (about 5.6 steps of about 23 words,
one image of 336 to 1024 px), and reports peak GPU memory and model FLOPs utilisation (MFU) as well.
`--text-layers` / `--vision-depth` shrink that shape so the same code path can be smoke-tested on a CPU.

Each run trains the same records for the same number of optimizer steps, once with random batches
(`train_sampling_strategy=random`) and once with length grouping, and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from mprm_hf.prm_config import PRMConfig
from mprm_hf.prm_trainer import PRMTrainer

# Dense bf16 peak of the GPUs MFU is reported for (tensor cores, no sparsity).
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
}
# Image sizes of VisualPRM400K's sources (geometry diagrams, charts, photos, documents).
REALISTIC_IMAGE_SIZES = [(336, 336), (448, 448), (512, 384), (640, 480), (800, 600), (1024, 768)]


class StepClock(TrainerCallback):
    """Wall time and tokens of the optimizer steps after the warm-up ones."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.start: float | None = None
        self.end: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if state.global_step == self.warmup_steps:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


class CountingPRMTrainer(PRMTrainer):
    """PRMTrainer that counts the real (non-padding) and padded tokens it trains on, per optimizer step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (global_step, real tokens, padded tokens, image placeholder tokens)
        self.tokens: list[tuple[int, int, int, int]] = []
        self.image_token_id = getattr(self.model.config, "image_token_id", None)

    def training_step(self, model, inputs, num_items_in_batch=None):
        mask = inputs["attention_mask"]
        images = int((inputs["input_ids"] == self.image_token_id).sum())
        self.tokens.append((self.state.global_step, int(mask.sum()), int(mask.numel()), images))
        return super().training_step(model, inputs, num_items_in_batch)


def tiny_setup(workdir: Path, rollouts: int) -> tuple[Any, Any, Any]:
    """The embedded tiny Qwen2-VL and the synthetic corpus as stepwise records."""
    from mprm_hf.data.stepwise import to_stepwise
    from mprm_hf.data.synthetic import write_synthetic
    from mprm_hf.data.visualprm400k import load_visualprm400k
    from mprm_hf.modeling import build_tiny_model, load_model_and_processor

    write_synthetic(workdir / "synthetic", rollouts=rollouts, benchmark_traces=0, seed=0, images=True)
    records, _ = to_stepwise(load_visualprm400k(workdir / "synthetic")[0])
    model_dir = build_tiny_model(workdir / "tiny", arch="qwen2_vl", seed=0)
    return (*load_model_and_processor(model_dir), records)


def qwen2_vl_2b_setup(workdir: Path, rollouts: int, text_layers: int | None, vision_depth: int | None):
    """Qwen2-VL-2B's shape with random weights (bf16, SDPA on a GPU), and realistic-size rollouts."""
    from PIL import Image
    from transformers import Qwen2VLForConditionalGeneration

    from mprm_hf.modeling import qwen2_vl_2b_config

    model, processor, records = tiny_setup(workdir, rollouts)
    del model
    processor.image_processor.min_pixels = 56 * 56
    processor.image_processor.max_pixels = (
        1024 * 28 * 28
    )  # at most 1,024 image tokens, as in VisualPRM400K training
    processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 1024 * 28 * 28}
    config = qwen2_vl_2b_config(processor.tokenizer, text_layers=text_layers, vision_depth=vision_depth)
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration._from_config(
        config, dtype=torch.bfloat16 if cuda else torch.float32, attn_implementation="sdpa"
    )
    rng = random.Random(0)
    image_dir = workdir / "images"
    image_dir.mkdir()

    def realistic_image(record: dict[str, Any], index: int) -> dict[str, Any]:
        width, height = rng.choice(REALISTIC_IMAGE_SIZES)
        path = image_dir / f"{index:05d}.png"
        with Image.open(record["images"][0]) as small:
            small.convert("RGB").resize((width, height)).save(path)
        return {"images": [str(path)]}

    records = records.map(realistic_image, with_indices=True, desc="Realistic image sizes")
    return model, processor, records


def training_flops(model: Any, real_tokens: int, image_tokens: int, seq_len: float) -> float:
    """Model FLOPs of training on `real_tokens` tokens: 6 N per language-model token (forward + backward; N
    without embeddings, the LM head runs only at step markers), attention's 12 L d T per token, and a
    forward-only pass of the frozen vision tower (2 N_vision per patch, merge^2 patches per image token)."""
    config = model.config
    text = config.text_config
    n_text = sum(
        p.numel()
        for name, p in model.named_parameters()
        if "visual" not in name and "embed_tokens" not in name
    )
    n_vision = sum(p.numel() for name, p in model.named_parameters() if "visual" in name)
    merge = config.vision_config.spatial_merge_size**2
    attention = 12 * text.num_hidden_layers * text.hidden_size * seq_len
    return (6 * n_text + attention) * real_tokens + 2 * n_vision * image_tokens * merge


def run(model, processor, records, *, strategy: str, steps: int, warmup: int, batch_size: int, bf16: bool):
    with tempfile.TemporaryDirectory() as out:
        args = PRMConfig(
            output_dir=out,
            use_cpu=not torch.cuda.is_available(),
            bf16=bf16,
            seed=0,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            train_sampling_strategy=strategy,
            activation_checkpointing=bf16,
            max_length=8192,
            learning_rate=1e-5,
            save_strategy="no",
            logging_steps=10**6,
            disable_tqdm=True,
        )
        clock = StepClock(warmup)
        trainer = CountingPRMTrainer(
            model=model, args=args, train_dataset=records, processing_class=processor, callbacks=[clock]
        )
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        seconds = clock.end - clock.start
        measured = [row[1:] for row in trainer.tokens if row[0] >= warmup]
        real = sum(row[0] for row in measured)
        padded = sum(row[1] for row in measured)
        result = {
            "strategy": strategy,
            "samples_per_s": (steps - warmup) * batch_size / seconds,
            "tokens_per_s": real / seconds,
            "padded_tokens_per_s": padded / seconds,
            "padding_efficiency": real / padded,
            "seconds": seconds,
        }
        if torch.cuda.is_available():
            result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if not isinstance(model, torch.nn.Module) or not hasattr(model.config, "vision_config"):
            return result
        images = sum(row[2] for row in measured)
        seq_len = padded / len(measured) / batch_size
        result["model_tflops_per_s"] = training_flops(model, real, images, seq_len) / seconds / 1e12
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-shape", choices=["tiny", "qwen2-vl-2b"], default="tiny")
    parser.add_argument("--rollouts", type=int, default=400, help="synthetic corpus size")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps not timed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="runs per sampler (the best one is reported)")
    parser.add_argument("--text-layers", type=int, help="shrink the 2B shape (CPU smoke test)")
    parser.add_argument("--vision-depth", type=int, help="shrink the 2B shape (CPU smoke test)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        if args.model_shape == "tiny":
            model, processor, records = tiny_setup(workdir, args.rollouts)
        else:
            model, processor, records = qwen2_vl_2b_setup(
                workdir, args.rollouts, args.text_layers, args.vision_depth
            )
        bf16 = torch.cuda.is_available() and args.model_shape != "tiny"
        if torch.cuda.is_available():
            model.to("cuda")
        initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        best: dict[str, dict[str, Any]] = {}
        # alternate the samplers and keep each one's best run: other load on the machine hits both alike
        for _ in range(args.repeats):
            for strategy in ("random", "group_by_length"):
                model.load_state_dict(initial)  # every run starts from the same weights
                result = run(
                    model,
                    processor,
                    records,
                    strategy=strategy,
                    steps=args.steps,
                    warmup=args.warmup,
                    batch_size=args.batch_size,
                    bf16=bf16,
                )
                name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
                peak = next((value for key, value in PEAK_BF16_FLOPS.items() if key in name), None)
                result["mfu"] = result["model_tflops_per_s"] * 1e12 / peak if peak else None
                if strategy not in best or result["tokens_per_s"] > best[strategy]["tokens_per_s"]:
                    best[strategy] = result
        results = [best["random"], best["group_by_length"]]
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"model shape: {args.model_shape}, device: {device}, batch {args.batch_size}, {args.steps - args.warmup} timed steps"
    )
    header = f"{'sampler':<16} {'samples/s':>10} {'tokens/s':>10} {'padded tok/s':>13} {'pad. eff.':>9}"
    extra = args.model_shape != "tiny"
    print(header + (f" {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>9}" if extra else ""))
    for result in results:
        line = (
            f"{result['strategy']:<16} {result['samples_per_s']:>10.2f} {result['tokens_per_s']:>10.0f} "
            f"{result['padded_tokens_per_s']:>13.0f} {result['padding_efficiency']:>9.2f}"
        )
        if extra:
            mfu = f"{100 * result['mfu']:.1f}%" if result.get("mfu") else "n/a"
            line += f" {result['model_tflops_per_s']:>8.1f} {mfu:>6} {result.get('peak_memory_gib', float('nan')):>9.1f}"
        print(line)
    ratio = results[1]["tokens_per_s"] / results[0]["tokens_per_s"]
    print(
        f"length grouping / random: {ratio:.2f}x tokens/s, "
        f"{results[1]['samples_per_s'] / results[0]['samples_per_s']:.2f}x samples/s"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
