"""`mprm-hf bon`: does the PRM pick better answers? Best-of-N accuracy on a candidate pool.

For each model every candidate of the pool (mprm_hf.data.bon_pool) is scored once, one forward pass per
candidate in batches, and its step rewards are cached beside the pool under the model's fingerprint, so a
new N, aggregation or seed costs no forward pass. Accuracy@N is the chance that the candidate with the best
aggregate score (mprm_hf.rerank's rules) among N drawn from a question's K is correct. Each of `--bootstrap`
draws takes a random N of the K candidates of every question and resamples the questions with replacement;
the point estimate is the mean over the draws, the interval their 2.5th-97.5th percentiles. Majority vote
(the most frequent final answer among the N), random choice (one of the N) and the oracle (pass@N: any of
the N is correct) are read from the same draws, so every difference between two lines is paired.

Writes DIR/bon.json (everything: per N, aggregation, model and source, with intervals and paired
differences) and DIR/bon.png (accuracy against N, one panel per aggregation, one line per model).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mprm_hf.data.bon_pool import Pool, load_pool
from mprm_hf.errors import MPRMError
from mprm_hf.fileio import folder_fingerprint, model_fingerprint, save_figure_atomic, write_text_atomic
from mprm_hf.rerank import AGGREGATES, aggregate_rewards, score_candidates

DEFAULT_N = (1, 2, 4, 8, 16)
DEFAULT_BOOTSTRAP = 1000
CONFIDENCE = 0.95
REPORT_FILE = "bon.json"
PLOT_FILE = "bon.png"
CACHE_DIR = ".bon-cache"
REFERENCES = ("random", "majority", "oracle")
_CHUNK_ELEMENTS = 5_000_000  # draws are made in chunks of about this many (question, candidate, candidate)


# ---------------------------------------------------------------------------------------------------
# Scoring, once per model and pool
# ---------------------------------------------------------------------------------------------------


def pool_rewards(
    pool: Pool,
    model: str,
    *,
    step_format: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[list[list[list[float]]], dict[str, Any]]:
    """The step rewards of every candidate of the pool (`[question][candidate][step]`) and where they
    came from; read from the cache beside the pool when this model scored this pool before."""
    fingerprint = model_fingerprint(model)
    pool_print = folder_fingerprint(pool.path)
    key = json.dumps([fingerprint, step_format, dtype, pool_print])
    cache = pool.root / CACHE_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"
    info = {"model": str(model), "fingerprint": fingerprint, "cache": str(cache)}
    if cache.is_file():
        try:
            saved = json.loads(cache.read_text(encoding="utf-8"))
            rewards = saved["rewards"]
            if saved["key"] == key and [len(q) for q in rewards] == [
                len(r["candidates"]) for r in pool.records
            ]:
                return rewards, {**info, "cached": True}
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache file is scored again and replaced
    from mprm_hf.scoring import load_for_scoring

    loaded, processor = load_for_scoring(
        argparse.Namespace(model=str(model), adapter=None, dtype=dtype, device=device)
    )
    resolved = [{**r, "images": [str(pool.root / image) for image in r["images"]]} for r in pool.records]
    rewards = score_candidates(
        loaded, processor, resolved, step_format=step_format, batch_size=batch_size, progress=progress
    )
    try:
        write_text_atomic(cache, json.dumps({"key": key, **info, "rewards": rewards}) + "\n")
    except OSError as error:  # a read-only pool (a shared Hub cache) still scores, uncached
        print(
            f"bon: cannot cache the rewards beside the pool ({error.strerror}); not cached", file=sys.stderr
        )
        info["cache"] = None
    return rewards, {**info, "cached": False}


def score_matrix(
    rewards: Sequence[Sequence[Sequence[float]]], aggregate: str, width: int
) -> tuple[np.ndarray, int]:
    """Aggregate scores `[question, candidate]` (padding and candidates with no scored step: -inf, never
    picked) and the number of candidates with no step scored."""
    matrix = np.full((len(rewards), width), -np.inf)
    unscored = 0
    for q, question in enumerate(rewards):
        for k, trace in enumerate(question):
            if trace:
                matrix[q, k] = aggregate_rewards(trace, aggregate)
            else:
                unscored += 1
    return matrix, unscored


def cut_candidates(pool: Pool, rewards: Sequence[Sequence[Sequence[float]]]) -> int:
    """Candidates whose trace was cut at the model's context (fewer rewards than steps)."""
    return sum(
        len(trace) < len(option["steps"])
        for record, question in zip(pool.records, rewards, strict=True)
        for option, trace in zip(record["candidates"], question, strict=True)
    )


# ---------------------------------------------------------------------------------------------------
# Best-of-N from scores: paired bootstrap draws
# ---------------------------------------------------------------------------------------------------


def _grades(pool: Pool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correctness and answer ids `[question, candidate]` (padding: False, -1) and candidates per question."""
    sizes = np.array([len(r["candidates"]) for r in pool.records])
    width = int(sizes.max())
    correct = np.zeros((len(sizes), width), dtype=bool)
    answers = np.full((len(sizes), width), -1, dtype=np.int64)
    for q, record in enumerate(pool.records):
        ids: dict[str, int] = {}
        for k, option in enumerate(record["candidates"]):
            correct[q, k] = option["correct"]
            answers[q, k] = ids.setdefault(option["answer"].strip(), len(ids))
    return correct, answers, sizes


def _interval(values: np.ndarray) -> list[float]:
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return [float(low), float(high)]


def evaluate(
    pool: Pool,
    scores: Mapping[str, Mapping[str, np.ndarray]],
    n_values: Sequence[int],
    *,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy@N with intervals for the reference lines and every `scores[label][aggregate]` matrix, over
    all questions and per source, and the paired differences against majority vote, random choice and
    between models."""
    correct, answers, sizes = _grades(pool)
    n_questions, width = correct.shape
    if min(n_values) < 1 or max(n_values) > sizes.min():
        raise MPRMError(f"N must be in [1, {int(sizes.min())}] (the fewest candidates of a question)")
    methods = list(REFERENCES) + [(label, how) for label in scores for how in scores[label]]
    outcomes = {(m, n): np.zeros((bootstrap, n_questions), dtype=bool) for m in methods for n in n_values}
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // (n_questions * width * width))
    padding = np.arange(width)[None, :] >= sizes[:, None]
    rows = np.arange(n_questions)[None, :, None]
    for start in range(0, bootstrap, chunk):
        stop = min(bootstrap, start + chunk)
        keys = rng.random((stop - start, n_questions, width))
        keys[:, padding] = 2.0  # padding sorts last, so the first N of the order are real candidates
        order = np.argsort(keys, axis=-1)
        for n in n_values:
            subset = order[..., :n]
            right = correct[rows, subset]
            outcomes["random", n][start:stop] = right[..., 0]
            outcomes["oracle", n][start:stop] = right.any(axis=-1)
            voted = answers[rows, subset]
            counts = (voted[..., :, None] == voted[..., None, :]).sum(axis=-1)
            pick = counts.argmax(axis=-1)[..., None]  # ties: the first in the random order
            outcomes["majority", n][start:stop] = np.take_along_axis(right, pick, -1)[..., 0]
            for label in scores:
                for how, matrix in scores[label].items():
                    best = matrix[rows, subset].argmax(axis=-1)[..., None]
                    outcomes[(label, how), n][start:stop] = np.take_along_axis(right, best, -1)[..., 0]
    groups: dict[str, np.ndarray] = {"overall": np.arange(n_questions)}
    sources = [record["source"] for record in pool.records]
    for source in sorted(set(sources)):
        groups[source] = np.array([q for q, s in enumerate(sources) if s == source])
    resamples = {
        name: rng.choice(members, size=(bootstrap, len(members))) for name, members in groups.items()
    }

    def line(outcome: np.ndarray, group: str) -> tuple[float, np.ndarray]:
        members = groups[group]
        draws = np.take_along_axis(outcome, resamples[group], axis=1).mean(axis=1)
        return float(outcome[:, members].mean()), draws

    def summary(values: np.ndarray, group: str, name: str = "accuracy") -> dict[str, Any]:
        point, draws = line(values, group)
        return {name: point, "ci": _interval(draws)}

    report: dict[str, Any] = {}
    for group in groups:
        entry: dict[str, Any] = {"questions": len(groups[group])}
        entry["reference"] = {
            ref: {str(n): summary(outcomes[ref, n], group) for n in n_values} for ref in REFERENCES
        }
        entry["models"] = {
            label: {
                how: {
                    str(n): {
                        **summary(outcomes[(label, how), n], group),
                        **{
                            f"vs_{ref}": summary(
                                outcomes[(label, how), n].astype(np.int8) - outcomes[ref, n],
                                group,
                                "difference",
                            )
                            for ref in ("majority", "random")
                        },
                    }
                    for n in n_values
                }
                for how in scores[label]
            }
            for label in scores
        }
        report[group] = entry
    labels = list(scores)
    pairs = {}
    for i, first in enumerate(labels):
        for second in labels[i + 1 :]:
            pairs[f"{first} - {second}"] = {
                how: {
                    str(n): summary(
                        outcomes[(first, how), n].astype(np.int8) - outcomes[(second, how), n],
                        "overall",
                        "difference",
                    )
                    for n in n_values
                }
                for how in scores[first]
                if how in scores[second]
            }
    overall = report.pop("overall")
    return {"overall": {**overall, "pairs": pairs}, "per_source": report}


# ---------------------------------------------------------------------------------------------------
# The harness
# ---------------------------------------------------------------------------------------------------


def model_labels(models: Sequence[str]) -> list[str]:
    """The shortest path endings that tell the models apart (`bis-0.1-seed0/model`)."""
    if not models:
        return []
    if len(set(models)) != len(models):
        raise MPRMError("--model: the same model is given twice")
    parts = [Path(model).parts for model in models]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(model) for model in models]


def run_bon(
    models: Sequence[str],
    pool_source: str | Path,
    out: str | Path | None,
    *,
    n_values: Sequence[int] = DEFAULT_N,
    aggregates: Sequence[str] = AGGREGATES,
    labels: Sequence[str] | None = None,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    batch_size: int = 16,
    step_format: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the pool with every model (or read the cache), evaluate best-of-N, and write `out/bon.json`
    and `out/bon.png` (nothing when `out` is None); return the report."""
    for how in aggregates:
        if how not in AGGREGATES:
            raise MPRMError(f"--aggregate: unknown aggregate {how!r} (choose from: {', '.join(AGGREGATES)})")
    if bootstrap < 1:
        raise MPRMError(f"--bootstrap must be at least 1 (got {bootstrap})")
    pool = load_pool(pool_source)
    fewest = min(len(record["candidates"]) for record in pool.records)
    usable = sorted({n for n in n_values if 1 <= n <= fewest})
    dropped = sorted({n for n in n_values if n not in usable})
    if not usable:
        raise MPRMError(f"--n: no N in [1, {fewest}] (the fewest candidates of a pool question)")
    labels = list(labels) if labels is not None else model_labels(models)
    if len(labels) != len(models):
        raise MPRMError(f"{len(labels)} labels for {len(models)} models")
    width = max(len(record["candidates"]) for record in pool.records)
    scores: dict[str, dict[str, np.ndarray]] = {}
    scored = []
    for label, model in zip(labels, models, strict=True):
        rewards, info = pool_rewards(
            pool,
            model,
            step_format=step_format,
            dtype=dtype,
            device=device,
            batch_size=batch_size,
            progress=progress,
        )
        scores[label] = {}
        for how in aggregates:
            scores[label][how], unscored = score_matrix(rewards, how, width)
        scored.append(
            {"label": label, **info, "truncated": cut_candidates(pool, rewards), "unscored": unscored}
        )
    candidates = sum(len(record["candidates"]) for record in pool.records)
    report = {
        "pool": str(pool.path),
        "pool_fingerprint": folder_fingerprint(pool.path),
        "questions": len(pool.records),
        "skipped": dict(pool.skipped),
        "candidates": {"total": candidates, "fewest": fewest, "most": width},
        "n": usable,
        "n_dropped": dropped,
        "aggregates": list(aggregates),
        "bootstrap": bootstrap,
        "confidence": CONFIDENCE,
        "seed": seed,
        "models": scored,
        **evaluate(pool, scores, usable, bootstrap=bootstrap, seed=seed),
    }
    if out is not None:
        out = Path(out)
        write_text_atomic(out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
        plot_bon(report, out / PLOT_FILE)
    return report


def _cell(entry: Mapping[str, Any]) -> str:
    low, high = entry["ci"]
    return f"{100 * entry['accuracy']:5.1f} [{100 * low:4.1f}, {100 * high:5.1f}]"


def format_report(report: Mapping[str, Any], *, per_source: bool = True) -> str:
    """Accuracy@N (%, with the interval) per line, then the per-source table at the largest N."""
    n_values = [str(n) for n in report["n"]]
    overall = report["overall"]
    rows_in = [(f"{ref} (reference)", overall["reference"][ref]) for ref in REFERENCES]
    rows_in += [
        (f"{label} [{how}]", by_n) for label, hows in overall["models"].items() for how, by_n in hows.items()
    ]
    width = max(len(name) for name, _ in rows_in)
    cell = 22
    header = f"{'accuracy@N, % [' + format(CONFIDENCE, '.0%') + ' CI]':<{width}}" + "".join(
        f"{'N=' + n:>{cell}}" for n in n_values
    )
    lines = [
        f"best-of-N on {report['pool']}: {report['questions']} questions, {report['candidates']['total']} "
        f"candidates; {report['bootstrap']} paired bootstrap draws (seed {report['seed']})",
        header,
        "-" * len(header),
    ]
    lines += [
        f"{name:<{width}}" + "".join(f"{_cell(by_n[n]):>{cell}}" for n in n_values) for name, by_n in rows_in
    ]
    if report["skipped"]:
        lines.append(
            "skipped: " + ", ".join(f"{c} question(s) with {r}" for r, c in report["skipped"].items())
        )
    if report["n_dropped"]:
        lines.append(
            f"N left out (more than the fewest candidates, {report['candidates']['fewest']}): "
            + ", ".join(map(str, report["n_dropped"]))
        )
    for model in report["models"]:
        if model["truncated"] or model["unscored"]:
            lines.append(
                f"{model['label']}: {model['truncated']} candidate(s) cut at the model's context "
                f"({model['unscored']} with no step scored: never picked)"
            )
    if per_source and report["per_source"]:
        n = n_values[-1]
        how = report["aggregates"][0]
        names = list(overall["models"])
        head = f"{'source':<34}{'questions':>10}" + "".join(f"{ref:>10}" for ref in REFERENCES)
        head += "".join(f"{label[-18:]:>20}" for label in names)
        lines += ["", f"per source, accuracy@{n} (%), PRMs by {how}", head, "-" * len(head)]
        for source, entry in report["per_source"].items():
            row = f"{source[:33]:<34}{entry['questions']:>10}"
            row += "".join(f"{100 * entry['reference'][ref][n]['accuracy']:>10.1f}" for ref in REFERENCES)
            row += "".join(f"{100 * entry['models'][label][how][n]['accuracy']:>20.1f}" for label in names)
            lines.append(row)
    return "\n".join(lines)


def plot_bon(report: Mapping[str, Any], path: Path) -> None:
    """Accuracy against N: one panel per aggregation, one line per model with its interval, and the
    reference lines (random choice, majority vote, the oracle)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_values = report["n"]
    overall = report["overall"]
    hows = report["aggregates"]
    figure, axes = plt.subplots(1, len(hows), figsize=(4.2 * len(hows), 4.0), sharey=True, squeeze=False)
    styles = {"random": ":", "majority": "--", "oracle": "-."}
    for axis, how in zip(axes[0], hows, strict=True):
        for ref in REFERENCES:
            values = [100 * overall["reference"][ref][str(n)]["accuracy"] for n in n_values]
            axis.plot(n_values, values, color="grey", linestyle=styles[ref], label=ref)
        for label, by_how in overall["models"].items():
            entries = [by_how[how][str(n)] for n in n_values]
            axis.plot(n_values, [100 * e["accuracy"] for e in entries], marker="o", label=label)
            axis.fill_between(
                n_values, [100 * e["ci"][0] for e in entries], [100 * e["ci"][1] for e in entries], alpha=0.15
            )
        axis.set_xscale("log", base=2)
        axis.set_xticks(n_values, [str(n) for n in n_values])
        axis.set_xlabel("N (candidates per question)")
        axis.set_title(f"PRM aggregate: {how}")
    axes[0][0].set_ylabel(f"accuracy@N, % ({CONFIDENCE:.0%} CI shaded)")
    axes[0][-1].legend(fontsize=7)
    figure.suptitle(f"best-of-N, {report['questions']} questions")
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=110)
    plt.close(figure)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one N")
    return values


def _aggregate_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [value for value in values if value not in AGGREGATES]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(AGGREGATES)}")
    return values


def build_parser() -> argparse.ArgumentParser:
    from mprm_hf.step_format import STEP_FORMATS

    parser = argparse.ArgumentParser(
        prog="mprm-hf bon", description=__doc__.splitlines()[0].split(": ", 1)[-1]
    )
    parser.add_argument(
        "--model", action="append", required=True, help="a trained PRM (folder or Hub id); repeat to compare"
    )
    parser.add_argument("--pool", required=True, help="pool folder, pool jsonl, or Hub dataset id")
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="where bon.json and bon.png go"
    )
    parser.add_argument(
        "--n", type=_int_list, default=list(DEFAULT_N), help="comma-separated N (default 1,2,4,8,16)"
    )
    parser.add_argument(
        "--aggregate",
        type=_aggregate_list,
        default=list(AGGREGATES),
        help=f"comma-separated step-reward aggregates (default {','.join(AGGREGATES)})",
    )
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, help="bootstrap draws")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws: same seed, same report")
    parser.add_argument("--batch-size", type=int, default=16, help="candidates per forward pass")
    parser.add_argument(
        "--step-format",
        default=None,
        choices=sorted(STEP_FORMATS),
        help="how a trace is laid out (default: the one each model was trained with)",
    )
    parser.add_argument("--dtype", default=None, help="e.g. float32, bfloat16 (default: the checkpoint's)")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda (default: cuda when available)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run_bon(
        args.model,
        args.pool,
        args.out,
        n_values=args.n,
        aggregates=args.aggregate,
        bootstrap=args.bootstrap,
        seed=args.seed,
        batch_size=args.batch_size,
        step_format=args.step_format,
        dtype=args.dtype,
        device=args.device,
    )
    print(format_report(report))
    cached = sum(model["cached"] for model in report["models"])
    print(
        f"\n{len(report['models'])} model(s) ({cached} from the cache); "
        f"report {args.out / REPORT_FILE}, plot {args.out / PLOT_FILE}"
    )
    return 0


def pool_references(pool: str | Path, n: int = 8, *, seed: int = 0) -> dict[str, float]:
    """Random choice, majority vote and the oracle at `n` on a pool: the lines a PRM is judged by."""
    report = run_bon([], pool, None, n_values=[n], aggregates=[], seed=seed, progress=False)
    return {ref: report["overall"]["reference"][ref][str(n)]["accuracy"] for ref in REFERENCES}


def bon_at(
    model: str | Path, pool: str | Path, n: int = 8, aggregate: str = "mean", *, seed: int = 0
) -> dict[str, Any]:
    """One model's accuracy@n by one aggregate on a pool, with its interval and the reference lines
    (what the sweep reports beside each run's F1)."""
    report = run_bon(
        [str(model)],
        pool,
        None,
        n_values=[n],
        aggregates=[aggregate],
        labels=["model"],
        seed=seed,
        progress=False,
    )
    overall = report["overall"]
    line = overall["models"]["model"][aggregate][str(n)]
    references = {ref: overall["reference"][ref][str(n)]["accuracy"] for ref in REFERENCES}
    return {"accuracy": line["accuracy"], "ci": line["ci"], **references}
