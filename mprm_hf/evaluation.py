"""`mprm-hf evaluate`: score a PRM checkpoint on VisualProcessBench and report the paper's metric.

Per-trace rewards are appended to OUT/scores.jsonl as they are computed, so an interrupted run resumes
where it stopped and the metric can always be recomputed from the saved scores
(`metrics_from_scores`). Under `accelerate launch` every process scores its own slice of the
remaining traces into OUT/scores.rank<N>.jsonl; the main process gathers the slices and computes the
metric once. The threshold is 0.5, a fixed `--threshold`, or chosen on a separate calibration split's
scores (`--calibration`); the test-set oracle is reported only as `oracle_threshold` / `oracle_overall`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mprm_hf.errors import MPRMError, first_line
from mprm_hf.fileio import model_fingerprint, save_figure_atomic, write_text_atomic

SCORES_FILE = "scores.jsonl"
METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"
PLOT_FILE = "threshold_curve.png"
SHARD_PATTERN = "scores.rank*.jsonl"
DEFAULT_BENCHMARK = "OpenGVLab/VisualProcessBench"
DEFAULT_THRESHOLD = 0.5


# ---------------------------------------------------------------------------------------------------
# Saved scores: one JSON object per trace, {"id", "data_source", "scores", "labels"}
# ---------------------------------------------------------------------------------------------------


def score_record(trace_id: str, data_source: str, scores: Sequence[float], labels: Sequence[int]) -> dict:
    """One line of scores.jsonl; the labels travel with the scores so the file alone gives the metric."""
    if len(scores) != len(labels):
        raise MPRMError(
            f"trace {trace_id}: the model returned {len(scores)} step scores for {len(labels)} labelled steps "
            f"(was the input cut at the maximum length?)"
        )
    return {
        "id": trace_id,
        "data_source": data_source,
        "scores": [float(s) for s in scores],
        "labels": [int(x) for x in labels],
    }


def read_scores(path: str | Path) -> list[dict]:
    """Read and validate a scores.jsonl (ours, or a calibration split's in the same format)."""
    path = Path(path)
    if not path.is_file():
        raise MPRMError(f"{path}: scores file not found")
    records: list[dict] = []
    seen: set[str] = set()
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            record = _parse_score_line(raw, f"{path}:{line_number}")
            if record["id"] in seen:
                raise MPRMError(f"{path}:{line_number}: field 'id' repeats trace {record['id']!r}")
            seen.add(record["id"])
            records.append(record)
    if not records:
        raise MPRMError(f"{path}: no scored trace")
    return records


def _parse_score_line(raw: bytes, where: str) -> dict:
    try:
        record = json.loads(raw)
    except ValueError as error:
        raise MPRMError(f"{where}: not a JSON line ({error})") from None
    if not isinstance(record, dict):
        raise MPRMError(f"{where}: not a JSON object")
    for field, kind in (("id", str), ("data_source", str), ("scores", list), ("labels", list)):
        if not isinstance(record.get(field), kind):
            raise MPRMError(f"{where}: field '{field}' is missing or not a {kind.__name__}")
    for index, score in enumerate(record["scores"]):
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise MPRMError(f"{where}: field 'scores[{index}]' is not a finite number ({score!r})")
    for index, label in enumerate(record["labels"]):
        if isinstance(label, bool) or label not in (1, 0, -1):
            raise MPRMError(f"{where}: field 'labels[{index}]' is not 1, 0 or -1 ({label!r})")
    if len(record["scores"]) != len(record["labels"]):
        raise MPRMError(
            f"{where}: field 'scores' has {len(record['scores'])} entries but 'labels' has {len(record['labels'])}"
        )
    return record


def _metric_inputs(records: Iterable[Mapping[str, Any]]) -> dict[str, list]:
    records = list(records)
    return {
        "predictions": [r["scores"] for r in records],
        "references": [r["labels"] for r in records],
        "data_sources": [r["data_source"] for r in records],
    }


def _drop_torn_tail(path: Path) -> int:
    """Cut a last line left half-written by a killed run (it has no newline); its trace is scored again."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with path.open("r+b") as handle:
        handle.truncate(keep)
    return 1


def _merge_shards(out: Path) -> None:
    """Append the per-process shards to scores.jsonl (skipping traces already there), then remove them."""
    scores_path = out / SCORES_FILE
    for shard in sorted(out.glob(SHARD_PATTERN)):
        if _drop_torn_tail(shard):
            print(f"{shard}: dropped a half-written last line (interrupted run); that trace is scored again")
        done = _scored_ids(scores_path)
        with scores_path.open("a", encoding="utf-8") as merged, shard.open("rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                if raw.strip():
                    record = _parse_score_line(raw, f"{shard}:{line_number}")
                    if record["id"] not in done:
                        merged.write(json.dumps(record) + "\n")
                        done.add(record["id"])
        shard.unlink()


def _scored_ids(path: Path) -> set[str]:
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    return {record["id"] for record in read_scores(path)}


# ---------------------------------------------------------------------------------------------------
# The metric from saved scores
# ---------------------------------------------------------------------------------------------------


def _metric():
    from mprm_hf.metrics import load_visualprocessbench_metric

    return load_visualprocessbench_metric(keep_in_memory=True)


def choose_threshold(calibration: str | Path) -> float:
    """The threshold that maximises `overall` on a calibration split's scores.jsonl."""
    return _metric().choose_threshold(**_metric_inputs(read_scores(calibration)))


def metrics_from_records(
    records: Sequence[Mapping[str, Any]],
    *,
    threshold: float | None = None,
    calibration: str | Path | None = None,
) -> dict[str, Any]:
    """The VisualProcessBench metric of scored traces, with where its threshold came from."""
    if threshold is not None and calibration is not None:
        raise MPRMError("give a fixed threshold or a calibration file, not both")
    if calibration is not None:
        threshold, source = choose_threshold(calibration), "calibration"
    elif threshold is not None:
        source = "fixed"
    else:
        threshold, source = DEFAULT_THRESHOLD, "default"
    try:
        result = _metric().compute(**_metric_inputs(records), threshold=threshold)
    except ValueError as error:
        raise MPRMError(str(error).splitlines()[0]) from None
    result["threshold_source"] = source
    result["calibration_file"] = str(calibration) if calibration is not None else None
    return result


def metrics_from_scores(
    path: str | Path, *, threshold: float | None = None, calibration: str | Path | None = None
) -> dict[str, Any]:
    """Recompute the metric from a saved scores.jsonl: equal to the run's metrics.json (without `run`)."""
    return metrics_from_records(read_scores(path), threshold=threshold, calibration=calibration)


def model_index(
    metrics: Mapping[str, Any], model_name: str, *, dataset_id: str = DEFAULT_BENCHMARK, split: str = "test"
) -> list[dict[str, Any]]:
    """The `model-index` metadata of a model card for these results (overall, pooled and per source),
    built from huggingface_hub `EvalResult` objects at the threshold the metric used."""
    from huggingface_hub.repocard_data import eval_results_to_model_index

    from mprm_hf.hub import eval_results_from_metrics

    results = eval_results_from_metrics(
        metrics, dataset=dataset_id, split=split, threshold=float(metrics.get("threshold", DEFAULT_THRESHOLD))
    )
    return eval_results_to_model_index(model_name, results)


# ---------------------------------------------------------------------------------------------------
# Reporting: the per-source table and the threshold curve
# ---------------------------------------------------------------------------------------------------


def format_table(metrics: Mapping[str, Any]) -> str:
    """The per-source table the terminal shows (values x 100, as papers print them)."""

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    width = max(len("overall (step-weighted)"), *(len(s) for s in metrics["per_source"]))
    header = f"{'source':<{width}}  {'traces':>6}  {'steps':>6}  {'F1 pos':>6}  {'F1 neg':>6}  {'macro':>6}  {'AUC':>6}"
    rows = [header, "-" * len(header)]
    for source, row in metrics["per_source"].items():
        rows.append(
            f"{source:<{width}}  {row['n_traces']:>6}  {row['n_steps']:>6}  {pct(row['f1_positive']):>6}  "
            f"{pct(row['f1_negative']):>6}  {pct(row['macro_f1']):>6}  {pct(row['auc']):>6}"
        )
    rows.append("-" * len(header))
    rows.append(
        f"{'pooled':<{width}}  {metrics['n_traces']:>6}  {metrics['n_steps']:>6}  {pct(metrics['f1_positive']):>6}  "
        f"{pct(metrics['f1_negative']):>6}  {pct(metrics['macro_f1_pooled']):>6}  {pct(metrics['auc']):>6}"
    )
    rows.append(
        f"{'overall (step-weighted)':<{width}}  {'':>6}  {'':>6}  {'':>6}  {'':>6}  {pct(metrics['overall']):>6}"
    )
    rows.append(
        f"threshold {metrics['threshold']:.4g} ({metrics['threshold_source']}); test-set oracle: threshold "
        f"{metrics['oracle_threshold']:.4g} -> overall {pct(metrics['oracle_overall'])} (an upper bound, not a result)"
    )
    return "\n".join(rows)


def plot_threshold_curve(
    records: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any], path: Path
) -> None:
    """Overall F1 against the threshold (exact step curve), marking 0.5, the threshold used and the oracle."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curve = _metric().threshold_curve(**_metric_inputs(records))
    thresholds, overall = curve["thresholds"], curve["overall"]
    # The value at a threshold holds from just above the previous one: a "pre" step, widened to [0, 1].
    xs = [min(0.0, thresholds[0]), *thresholds, max(1.0, thresholds[-1])]
    ys = [overall[0], *overall, overall[-1]]
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.step(xs, ys, where="pre", color="black", linewidth=1.2, label="overall F1")
    marks = [(DEFAULT_THRESHOLD, "tab:blue", "default")]
    if metrics["threshold_source"] != "default":
        marks.append((metrics["threshold"], "tab:green", f"used ({metrics['threshold_source']})"))
    marks.append((metrics["oracle_threshold"], "tab:red", "test-set oracle"))
    for value, colour, name in marks:
        axes.axvline(value, color=colour, linestyle="--", linewidth=1, label=f"{name} ({value:.3g})")
    axes.set_xlabel("threshold (a step is predicted correct iff reward >= threshold)")
    axes.set_ylabel("overall F1 (step-weighted over sources)")
    axes.set_xlim(xs[0], xs[-1])
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    save_figure_atomic(figure, path, dpi=120)


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class EvaluateArguments:
    """The options of `mprm-hf evaluate` (flags, or the keys of a recipe: recipes/evaluate/)."""

    model: str = dataclasses.field(metadata={"help": "checkpoint folder or Hub id", "metavar": "PATH"})
    adapter: str | None = dataclasses.field(
        default=None, metadata={"help": "a LoRA adapter folder applied on top of --model", "metavar": "PATH"}
    )
    benchmark: str = dataclasses.field(
        default=DEFAULT_BENCHMARK, metadata={"help": "VisualProcessBench folder or Hub id", "metavar": "PATH"}
    )
    split: str = dataclasses.field(default="test", metadata={"help": "benchmark split (its <split>.jsonl)"})
    out: Path = dataclasses.field(
        metadata={"help": "output folder (scores.jsonl, metrics.json, plot)", "metavar": "PATH"}
    )
    threshold: float | None = dataclasses.field(
        default=None, metadata={"help": "fixed threshold (default 0.5); not with --calibration"}
    )
    calibration: Path | None = dataclasses.field(
        default=None,
        metadata={
            "help": "a scores.jsonl of a separate split; the threshold is chosen on it (not with --threshold)",
            "metavar": "PATH",
        },
    )
    batch_size: int = dataclasses.field(default=8, metadata={"help": "traces per forward pass"})
    step_format: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "how a trace is laid out (default: the one the model was trained with, else prm-token)",
            "choices": ["prm-token", "visualprm"],
        },
    )
    limit: int | None = dataclasses.field(
        default=None, metadata={"help": "score only the first N traces", "metavar": "N"}
    )
    dtype: str | None = dataclasses.field(
        default=None, metadata={"help": "model dtype, e.g. bfloat16 (default: the checkpoint's)"}
    )
    max_length: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "tokens per trace; a longer trace is scored up to its last whole step that fits "
            "(default: the model's context)"
        },
    )
    allow_outside_images: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "read image paths that leave the benchmark folder (../, absolute); default: skip those records"
        },
    )
    update_card: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "add the results to the model folder's README.md card as model-index, with the calibrated "
            "threshold as prm_threshold"
        },
    )


def parse_args(argv: Sequence[str]) -> EvaluateArguments:
    """The options from a recipe and flags, checked before hours of scoring rather than after."""
    from mprm_hf.recipes import parse_recipe

    (args,) = parse_recipe(
        (EvaluateArguments,), argv, prog="mprm-hf evaluate", description=__doc__.splitlines()[0]
    )
    if args.threshold is not None and args.calibration is not None:
        raise MPRMError("give either --threshold or --calibration, not both")
    if args.batch_size < 1:
        raise MPRMError(f"--batch-size must be >= 1 (got {args.batch_size})")
    if args.max_length is not None and args.max_length < 16:
        raise MPRMError(f"--max-length must be >= 16 tokens (got {args.max_length})")
    if args.limit is not None and args.limit < 1:
        raise MPRMError(f"--limit must be >= 1 (got {args.limit})")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise MPRMError(f"--threshold must be a finite number (got {args.threshold})")
    if args.update_card and not Path(args.model).is_dir():
        raise MPRMError("--update-card needs a local model folder")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.calibration is not None:
        read_scores(args.calibration)  # fail before hours of scoring, not after
    report = evaluate_benchmark(args)
    if args.update_card and report is not None:  # the main process, once the metrics are written
        from mprm_hf.hub import update_model_card

        card = update_model_card(
            args.model, report, dataset=args.benchmark, split=args.split, threshold=report["threshold"]
        )
        print(f"added the results to {card}")
    return 0


RESCORED_ON_CHANGE = ("weights", "adapter_weights", "dtype")
"""Keys of run.json whose change means the same model path now holds another model: rescore."""


def _check_run_identity(out: Path, identity: dict[str, Any]) -> bool:
    """Whether the scores in `out` belong to this run. A model retrained in place (new weights, same
    path) or another dtype means they do not: False, and the caller scores again. Scores of another
    model path, adapter, benchmark, split or step format are refused in one line (every process
    checks, so none is left waiting for a failed one)."""
    path = out / RUN_FILE
    if not path.is_file():
        return True
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise MPRMError(
            f"{path}: not a run file of mprm-hf evaluate (unreadable JSON); use another --out"
        ) from None
    changed = [key for key, value in identity.items() if previous.get(key) != value]
    refused = [key for key in changed if key not in RESCORED_ON_CHANGE]
    if refused:
        key = refused[0]
        raise MPRMError(
            f"{path}: this folder holds scores for {key}={previous.get(key)!r}, not {identity[key]!r}; "
            f"use another --out"
        )
    return not changed


def _name(path_or_repo: str | Path) -> str:
    """A local folder by its absolute path (so `./ckpt` and `ckpt` are one model), a Hub id as given."""
    local = Path(path_or_repo).expanduser()
    return str(local.resolve()) if local.exists() else str(path_or_repo)


def _process_state():
    """accelerate's view of this process. A CPU-only machine launched with several processes (e.g. the
    DDP recipe) must say so explicitly, or every process would believe it is alone and score everything."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(
        cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or (launched and not torch.cuda.is_available())
    )


def _trained_step_format(model: str) -> str:
    """The step format recorded in the checkpoint's config, so that run.json names the one scored with."""
    from transformers import AutoConfig

    from mprm_hf.hub_access import from_hub
    from mprm_hf.step_format import CONFIG_KEY, DEFAULT_STEP_FORMAT

    try:
        config = from_hub(str(model), "model", lambda hub: AutoConfig.from_pretrained(model, **hub))
    except (OSError, ValueError):  # loading the model reports the real error, in one line (MPRMError too)
        return DEFAULT_STEP_FORMAT
    return getattr(config, CONFIG_KEY, None) or DEFAULT_STEP_FORMAT


def evaluate_benchmark(args: EvaluateArguments) -> dict[str, Any] | None:
    """Score what is not yet scored, then (main process) gather and report. Returns the metrics there."""
    from mprm_hf.data.visualprocessbench import load_visualprocessbench

    state = _process_state()
    out: Path = args.out
    args.step_format = args.step_format or _trained_step_format(args.model)
    identity = {
        "model": _name(args.model),
        "adapter": None if args.adapter is None else _name(args.adapter),
        "benchmark": _name(args.benchmark),
        "split": args.split,
        "step_format": args.step_format,
        "weights": model_fingerprint(args.model),
        "adapter_weights": None if args.adapter is None else model_fingerprint(args.adapter),
        "dtype": args.dtype,
    }
    same_run = _check_run_identity(out, identity)
    state.wait_for_everyone()  # every process has read the old run.json before it is replaced
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not same_run:
            print(
                f"{out}: the model's weights (or dtype) changed since these scores were written; scoring again"
            )
            for stale in [out / SCORES_FILE, *out.glob("scores.rank*.jsonl")]:
                stale.unlink(missing_ok=True)
        if not same_run or not (out / RUN_FILE).is_file():
            write_text_atomic(out / RUN_FILE, json.dumps(identity, indent=2) + "\n")
        # Leftovers of an interrupted run (any number of processes) join scores.jsonl first.
        if _drop_torn_tail(out / SCORES_FILE):
            print(
                f"{out / SCORES_FILE}: dropped a half-written last line (interrupted run); that trace is scored again"
            )
        _merge_shards(out)
    state.wait_for_everyone()

    benchmark, _ = load_visualprocessbench(
        args.benchmark, split=args.split, allow_outside_images=args.allow_outside_images
    )
    if args.limit is not None:
        benchmark = benchmark.select(range(min(args.limit, len(benchmark))))
    done = _scored_ids(out / SCORES_FILE)
    todo = [index for index, trace_id in enumerate(benchmark["id"]) if trace_id not in done]
    _check_images(benchmark.select(todo))
    mine = todo[state.process_index :: state.num_processes]
    if state.is_main_process:
        print(
            f"{len(benchmark)} traces: {len(benchmark) - len(todo)} already scored in {out / SCORES_FILE}, "
            f"{len(todo)} to score on {state.num_processes} process(es)"
        )
    if mine:
        target = out / (
            SCORES_FILE if state.num_processes == 1 else f"scores.rank{state.process_index}.jsonl"
        )
        _score_into(
            benchmark.select(mine), args, target, device=state.device, show_progress=state.is_main_process
        )
    state.wait_for_everyone()
    if not state.is_main_process:
        return None

    _merge_shards(out)
    selected = set(benchmark["id"])
    records = [r for r in read_scores(out / SCORES_FILE) if r["id"] in selected]
    metrics = metrics_from_records(records, threshold=args.threshold, calibration=args.calibration)
    skipped = len(selected) - len(records)
    if skipped:
        print(f"{skipped} trace(s) could not be scored and are left out of the metrics (listed above)")
    report = {
        **metrics,
        "run": {
            **identity,
            "n_traces_benchmark": len(benchmark),
            "n_traces_skipped": skipped,
            "limit": args.limit,
        },
    }
    write_text_atomic(out / METRICS_FILE, json.dumps(report, indent=2) + "\n")
    plot_threshold_curve(records, metrics, out / PLOT_FILE)
    print(format_table(metrics))
    print(f"wrote {out / SCORES_FILE}, {out / METRICS_FILE}, {out / PLOT_FILE}")
    return report


def _check_images(traces) -> None:
    """Fail before loading the model, not hours into the run, when an image file is absent."""
    for row in traces:
        for path in row["images"]:
            if not Path(path).is_file():
                raise MPRMError(f"trace {row['id']}: image file not found: {path}")


def _score_into(traces, args: EvaluateArguments, target: Path, *, device: Any, show_progress: bool) -> None:
    """Score `traces` batch by batch, appending each batch's lines to `target` as soon as it is done.
    Longest traces first, so a batch holds traces of similar length (little padding) and memory
    problems show up at once rather than at the end."""
    from tqdm.auto import tqdm

    from mprm_hf.modeling import load_model_and_processor

    model, processor = load_model_and_processor(args.model, adapter=args.adapter, dtype=args.dtype)
    model.to(device)
    rows = sorted(traces, key=lambda row: len(row["question"]) + sum(map(len, row["steps"])), reverse=True)
    with (
        target.open("a", encoding="utf-8") as sink,
        tqdm(total=len(rows), desc="scoring traces", unit="trace", disable=not show_progress) as progress,
    ):
        for start in range(0, len(rows), args.batch_size):
            batch = rows[start : start + args.batch_size]
            scored = _score_batch(model, processor, batch, args)
            lines = [
                json.dumps(score_record(row["id"], row["data_source"], trace_scores, row["labels"]))
                for row, trace_scores in scored
            ]
            sink.write("".join(line + "\n" for line in lines))
            sink.flush()
            progress.update(len(batch))


def _score_batch(model: Any, processor: Any, batch: list, args: EvaluateArguments) -> list[tuple[dict, list]]:
    """(row, step scores) of a batch; when the batch fails, trace by trace, so that one trace the model
    cannot take (a step holding the marker or a chat-template token, say) is a located, counted skip
    (`test.jsonl:LINE`, on stderr) and every other trace is scored."""
    from mprm_hf.scoring import score_traces

    def score(rows: list) -> list:
        traces = [{"question": r["question"], "steps": r["steps"], "images": r["images"]} for r in rows]
        return score_traces(
            model, processor, traces, batch_size=args.batch_size, step_format=args.step_format, progress=False,
            max_length=args.max_length,
        )  # fmt: skip

    try:
        scored = list(zip(batch, score(batch), strict=True))
    except MPRMError:
        scored = []
        for row in batch:
            try:
                scored.append((row, score([row])[0]))
            except MPRMError as error:
                message = first_line(error).removeprefix("trace 0: ").removeprefix("trace 0 ")
                print(
                    f"skipped {args.split}.jsonl:{row['line']} (id {row['id']}): {message}", file=sys.stderr
                )
    kept = []
    for row, scores in scored:
        if len(scores) < len(row["steps"]):  # longer than the context: its last steps stay unscored
            print(
                f"{args.split}.jsonl:{row['line']} (id {row['id']}): {len(row['steps']) - len(scores)} of "
                f"{len(row['steps'])} steps left unscored (longer than the model's context or --max-length)",
                file=sys.stderr,
            )
            if not scores:
                continue
            row = {**row, "labels": row["labels"][: len(scores)]}
        kept.append((row, scores))
    return kept


def position_baseline(benchmark: str | Path, split: str = "test") -> dict[str, Any]:
    """The metric of a scorer that reads only a step's place in its trace (1 - j / n): the reference line a
    trained PRM must beat to show it judges the steps themselves."""
    from mprm_hf.data.visualprocessbench import load_visualprocessbench

    traces, _ = load_visualprocessbench(benchmark, split=split)
    records = [
        score_record(str(index), source, [1.0 - j / len(labels) for j in range(len(labels))], labels)
        for index, (source, labels) in enumerate(zip(traces["data_source"], traces["labels"], strict=True))
    ]
    return metrics_from_records(records)
