"""Best-of-N: pick the best of N candidate reasoning traces per question by an aggregate of step rewards.

`mean` is VisualPRM's choice; `min` (the weakest step), `last` (the final step) and `product` (the
chance that every step is right, if steps were independent) are the other usual ones.

`mprm-hf rerank --model PATH --candidates FILE.jsonl --out FILE.jsonl` reads one question per line:
`{"id": ..., "question": str, "images": [path, ...], "candidates": [{"steps": [str, ...]}, ...]}`
(image paths relative to the candidates file's folder) and writes the same records with
`best_index`, `aggregate`, `candidate_scores` and `step_rewards` added.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mprm_hf.data.bon_pool import read_records
from mprm_hf.errors import MPRMError
from mprm_hf.fileio import write_text_atomic
from mprm_hf.scoring import add_model_arguments, load_for_scoring, score_traces

AGGREGATES = ("mean", "min", "last", "product")


def aggregate_rewards(rewards: Sequence[float], how: str = "mean") -> float:
    """One score for a trace from its step rewards."""
    if how not in AGGREGATES:
        raise MPRMError(f"unknown aggregate {how!r} (choose one of: {', '.join(AGGREGATES)})")
    if not rewards:
        raise MPRMError("cannot aggregate the rewards of a trace without steps")
    if how == "mean":
        return math.fsum(rewards) / len(rewards)
    if how == "min":
        return min(rewards)
    if how == "last":
        return rewards[-1]
    return math.prod(rewards)


def best_index(scores: Sequence[float]) -> int:
    """The candidate with the highest score; ties go to the earliest."""
    return max(range(len(scores)), key=lambda option: (scores[option], -option))


def score_candidates(
    model: Any,
    processor: Any,
    questions: Sequence[dict[str, Any]],
    *,
    step_format: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> list[list[list[float]]]:
    """The step rewards of every candidate of every question (`[question][candidate][step]`).

    All candidates of all questions are scored together, one forward pass per candidate, so batches fill
    up across questions.
    """
    traces, owners = [], []
    for index, record in enumerate(questions):
        options = record.get("candidates")
        if not isinstance(options, list) or not options:
            raise MPRMError(f"question {index}: field 'candidates' must be a non-empty list")
        for option in options:
            steps = option.get("steps") if isinstance(option, dict) else None
            traces.append(
                {"question": record.get("question"), "images": record.get("images") or [], "steps": steps}
            )
            owners.append(index)
    rewards = score_traces(
        model, processor, traces, batch_size=batch_size, step_format=step_format, progress=progress
    )
    results: list[list[list[float]]] = [[] for _ in questions]
    for index, trace_rewards in zip(owners, rewards, strict=True):
        results[index].append(trace_rewards)
    return results


def rerank(
    model: Any,
    processor: Any,
    candidates: Sequence[dict[str, Any]],
    *,
    aggregate: str = "mean",
    step_format: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """For each question `{"question", "images", "candidates": [{"steps": [...]}, ...]}` return
    `{"best_index", "aggregate", "candidate_scores", "step_rewards"}` (ties go to the earliest candidate)."""
    if aggregate not in AGGREGATES:
        raise MPRMError(f"unknown aggregate {aggregate!r} (choose one of: {', '.join(AGGREGATES)})")
    rewards = score_candidates(
        model, processor, candidates, step_format=step_format, batch_size=batch_size, progress=progress
    )
    results = []
    for question_rewards in rewards:
        scores = [aggregate_rewards(trace_rewards, aggregate) for trace_rewards in question_rewards]
        results.append(
            {
                "best_index": best_index(scores),
                "aggregate": aggregate,
                "candidate_scores": scores,
                "step_rewards": question_rewards,
            }
        )
    return results


def read_candidates(path: str | Path) -> list[dict[str, Any]]:
    """Questions with candidates from a jsonl file, as written (a single image path becomes a list);
    errors name the file, the line and the field. The record is a best-of-N pool's without the grades."""
    return read_records(path, graded=False)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mprm-hf rerank",
        description="Pick the best of N candidate traces per question by an aggregate of step rewards.",
    )
    add_model_arguments(parser)
    parser.add_argument("--candidates", required=True, help="jsonl: question, images, candidates: [{steps}]")
    parser.add_argument(
        "--aggregate", default="mean", choices=AGGREGATES, help="how step rewards become one score"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="traces per forward pass")
    parser.add_argument("--out", required=True, help="output jsonl: the input records plus the ranking")
    args = parser.parse_args(argv)
    records = read_candidates(args.candidates)
    root = Path(args.candidates).resolve().parent
    resolved = [{**record, "images": [str(root / image) for image in record["images"]]} for record in records]
    model, processor = load_for_scoring(args)
    ranked = rerank(
        model,
        processor,
        resolved,
        aggregate=args.aggregate,
        step_format=args.step_format,
        batch_size=args.batch_size,
    )
    out = Path(args.out)
    write_text_atomic(
        out,
        "".join(
            json.dumps({**record, **result}, ensure_ascii=False) + "\n"
            for record, result in zip(records, ranked, strict=True)
        ),
    )
    candidates = sum(len(record["candidates"]) for record in records)
    print(
        f"reranked {len(records)} questions ({candidates} candidates) by {args.aggregate} step reward -> {out}"
    )
    return 0
