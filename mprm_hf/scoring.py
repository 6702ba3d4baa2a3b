"""Score reasoning steps with a process reward model: one forward pass per trace reads every step's reward.

A step's reward is the softmax over the two reward-token logits at its position (docs/definitions.md#model-and-training), taken for the
positive token, so it lies in (0, 1). Inputs are built by `mprm_hf.step_format.encode_traces`, the
function training uses, so a checkpoint is scored on exactly the layout it was trained on.

`mprm-hf score --model PATH --image IMG --question TEXT --steps FILE` prints each step with its reward.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from mprm_hf.errors import MPRMError
from mprm_hf.step_format import (
    STEP_FORMATS,
    check_trace_fields,
    encode_traces,
    forward_step_reward_logits,
    model_step_format,
    reward_token_ids,
    split_steps,
)


def _trace_size(trace: dict[str, Any]) -> int:
    """A cheap proxy of a trace's token length, to batch traces of similar length together."""
    text = trace.get("prompt", trace.get("question", "")) or ""
    return (
        len(text) + sum(len(step) for step in trace.get("steps") or []) + 256 * len(trace.get("images") or [])
    )


def _as_encoder_trace(trace: dict[str, Any], index: int) -> dict[str, Any]:
    """The `encode_traces` form of an input trace, its text checked here so errors name the input index."""
    if not isinstance(trace, dict):
        raise MPRMError(f"trace {index}: not a dict with 'question', 'steps' and 'images'")
    prompt = trace["prompt"] if "prompt" in trace else trace.get("question")
    encoded = {"prompt": prompt, "steps": trace.get("steps"), "images": trace.get("images") or []}
    if trace.get("id") is not None:
        encoded["id"] = trace["id"]
    where = f"trace {index}" + (f" (id {trace['id']!r})" if trace.get("id") is not None else "")
    check_trace_fields(encoded, where)
    return encoded


def score_traces(
    model: Any,
    processor: Any,
    traces: Sequence[dict[str, Any]],
    *,
    batch_size: int = 8,
    step_format: str | None = None,
    progress: bool = True,
    max_length: int | None = None,
) -> list[list[float]]:
    """Step rewards of many traces `{"question" (or "prompt"), "steps", "images"}`, in input order.

    Traces are sorted by length and batched (`batch_size` per forward pass) so that padding stays small;
    `images` are PIL images or paths. A trace longer than `max_length` tokens (default: the model's
    context, `max_position_embeddings`) is cut after its last whole step that fits, as in training: its
    list of rewards is then shorter than its steps (the steps left unscored), never an out-of-memory.
    """
    if batch_size < 1:
        raise MPRMError(f"batch_size must be at least 1 (got {batch_size})")
    fmt = model_step_format(model, step_format)
    reward_ids = reward_token_ids(processor, fmt)
    prepared = [_as_encoder_trace(trace, index) for index, trace in enumerate(traces)]
    order = sorted(range(len(prepared)), key=lambda index: _trace_size(prepared[index]), reverse=True)
    results: list[list[float] | None] = [None] * len(prepared)
    limit = max_length or context_length(model)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.inference_mode():
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc="scoring", unit="batch", disable=not progress):
                chunk = order[start : start + batch_size]
                batch = encode_traces(processor, fmt, [prepared[index] for index in chunk], max_length=limit)
                pairs = forward_step_reward_logits(model, batch, reward_ids)
                rewards = torch.softmax(pairs.float(), dim=-1)[..., 0].cpu()
                for row, index in enumerate(chunk):
                    results[index] = rewards[row, : batch["n_steps"][row]].tolist()
    finally:
        model.train(was_training)
    return [scores if scores is not None else [] for scores in results]


def context_length(model: Any) -> int | None:
    """The model's context in tokens (its text config's `max_position_embeddings`), when it says."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def score_steps(
    model: Any,
    processor: Any,
    images: Image.Image | str | Path | Sequence[Image.Image | str | Path] | None,
    question: str,
    steps: Sequence[str],
    *,
    step_format: str | None = None,
) -> list[float]:
    """The reward of every step of one trace (one forward pass). `step_format` defaults to the one the
    model was trained with (`prm-token` for a model without one)."""
    if images is None:
        images = []
    elif isinstance(images, (Image.Image, str, Path)):
        images = [images]
    trace = {"question": question, "steps": list(steps), "images": list(images)}
    return score_traces(model, processor, [trace], batch_size=1, step_format=step_format, progress=False)[0]


def read_steps_file(path: str | Path) -> list[str]:
    """Steps from a file: a JSON list of strings, or plain text with one step per blank-line-separated block."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # an editor's byte-order mark is not part of step 1
    except FileNotFoundError as error:
        raise MPRMError(f"{path}: steps file not found") from error
    except (OSError, UnicodeDecodeError) as error:
        raise MPRMError(f"{path}: cannot read the steps file: {error}") from error
    if text.lstrip().startswith("["):
        try:
            steps = json.loads(text)
        except json.JSONDecodeError as error:
            raise MPRMError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from error
        if not isinstance(steps, list) or not all(isinstance(step, str) for step in steps):
            raise MPRMError(f"{path}: a JSON steps file must hold a list of strings")
        steps = [step.strip() for step in steps]
        for index, step in enumerate(steps):
            if not step:
                raise MPRMError(f"{path}: step {index + 1} is empty")
    else:
        steps = split_steps(text.replace("\r\n", "\n"))
    if not steps:
        raise MPRMError(f"{path}: no steps (write one step per blank-line-separated block, or a JSON list)")
    return steps


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model options `score` and `rerank` share."""
    parser.add_argument("--model", required=True, help="model folder or Hub id (a trained PRM)")
    parser.add_argument("--adapter", help="optional PEFT (LoRA) adapter folder applied on top of --model")
    parser.add_argument(
        "--step-format",
        default=None,
        choices=sorted(STEP_FORMATS),
        help="how a trace is laid out (default: the one the model was trained with, else prm-token)",
    )
    parser.add_argument("--dtype", default=None, help="e.g. float32, bfloat16 (default: the checkpoint's)")
    parser.add_argument(
        "--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cuda when available)"
    )


def load_for_scoring(args: argparse.Namespace) -> tuple[Any, Any]:
    from mprm_hf.modeling import load_model_and_processor

    model, processor = load_model_and_processor(args.model, adapter=args.adapter, dtype=args.dtype)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as error:
        raise MPRMError(f"--device {device}: {str(error).splitlines()[0]}") from error
    return model, processor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mprm-hf score", description="Print the reward of every step of one reasoning trace."
    )
    add_model_arguments(parser)
    parser.add_argument("--image", action="append", default=[], help="an image of the question (repeatable)")
    parser.add_argument("--question", required=True, help="the question text")
    parser.add_argument(
        "--steps", required=True, help="file of steps: blank-line-separated blocks, or a JSON list of strings"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of {step, reward} instead")
    args = parser.parse_args(argv)
    for image in args.image:
        if not Path(image).is_file():
            raise MPRMError(f"--image {image}: file not found")
    if not args.question.strip():
        raise MPRMError("--question is empty")
    steps = read_steps_file(args.steps)
    model, processor = load_for_scoring(args)
    rewards = score_steps(model, processor, args.image, args.question, steps, step_format=args.step_format)
    if args.json:
        print(
            json.dumps(
                [{"step": step, "reward": reward} for step, reward in zip(steps, rewards, strict=True)]
            )
        )
        return 0
    for number, (step, reward) in enumerate(zip(steps, rewards, strict=True), start=1):
        first_line = step.splitlines()[0]
        shown = first_line if len(first_line) <= 90 and "\n" not in step else first_line[:87] + "..."
        print(f"step {number:>2}  reward {reward:.4f}  {shown}")
    return 0
