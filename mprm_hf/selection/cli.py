"""`mprm-hf select`: score rollouts, keep a subset, write it (stepwise records or the reference's PRM
jsonl), print the per-source table, and stage / push it to the Hub with a dataset card."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from mprm_hf.errors import MPRMError
from mprm_hf.selection.report import SelectionReport, SourceRow

FORMATS = ("jsonl", "parquet", "arrow", "reference")
# CLI flag (argparse dest) -> selector parameter
SELECTOR_FLAGS = {
    "alpha": "alpha",
    "seed": "seed",
    "entropy_model": "model",
    "entropy_drop": "drop",
    "curriculum": "curriculum",
    "step_format": "step_format",
    "batch_size": "batch_size",
}


def build_parser() -> argparse.ArgumentParser:
    from mprm_hf.selection.selectors import SELECTORS

    parser = argparse.ArgumentParser(
        prog="mprm-hf select",
        description="Select an informative subset of MC-annotated rollouts (BIS and baselines) and write or push it.",
    )
    parser.add_argument(
        "--annotations", required=True, help="annotations/ folder (or the corpus root, or a Hub id)"
    )
    parser.add_argument("--method", default="bis", choices=list(SELECTORS), help="selector (default: bis)")
    budget = parser.add_argument_group("budget (one of)")
    budget.add_argument(
        "--top-ratio", type=float, help="keep max(1, floor(m * R)) of the m rollouts of each source"
    )
    budget.add_argument("--budget", type=int, help="keep N rollouts over all sources")
    params = parser.add_argument_group("selector parameters")
    params.add_argument("--alpha", type=float, help="bis: smoothing term alpha (default 0.05)")
    params.add_argument("--seed", type=int, help="random / mixed: sampling seed (default 0)")
    params.add_argument(
        "--entropy-model", help="entropy: PRM (path or Hub id) whose step predictions give the entropy"
    )
    params.add_argument(
        "--entropy-drop",
        type=float,
        help="entropy: fraction of highest-entropy rollouts dropped per source (default 0.1)",
    )
    params.add_argument(
        "--curriculum",
        action="store_const",
        const=True,
        help="entropy: order the output from low to high entropy",
    )
    params.add_argument("--step-format", help="entropy: step format of the scoring model (default prm-token)")
    params.add_argument("--batch-size", type=int, help="entropy: traces per forward pass (default 8)")
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output", required=True, type=Path, help="output file (jsonl, parquet, reference) or folder (arrow)"
    )
    output.add_argument(
        "--format",
        default="jsonl",
        choices=FORMATS,
        help="stepwise records as jsonl/parquet/arrow, or the reference's PRM jsonl",
    )
    output.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="stepwise: a step is positive iff its MC score > threshold",
    )
    output.add_argument(
        "--num-proc",
        type=int,
        default=None,
        help="processes for scanning and datasets maps (default: all cores)",
    )
    output.add_argument(
        "--no-cache", action="store_true", help="reference: rescan instead of using the cached score table"
    )
    output.add_argument(
        "--cache-records",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="reference: also cache every ranked rollout's PRM line (about half the corpus size on disk), "
        "so later alphas and ratios only copy bytes: for sweeps. Default: cache the score table only, "
        "for the fastest first run; later runs convert their kept lines (a records cache built earlier "
        "is still used)",
    )
    output.add_argument("--revision", help="revision of the source corpus when it is a Hub id")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    hub = parser.add_argument_group("Hub")
    hub.add_argument(
        "--push-to-hub", metavar="REPO", help="push the subset with its dataset card to this dataset repo"
    )
    hub.add_argument(
        "--dry-run", action="store_true", help="write the folder that would be pushed, push nothing"
    )
    hub.add_argument("--stage-dir", type=Path, help="where the Hub folder is written (default: OUTPUT.hub)")
    hub.add_argument("--private", action="store_true", help="create the Hub repo private")
    hub.add_argument("--pretty-name", help="dataset card title")
    hub.add_argument(
        "--license",
        default=None,
        help="license of the subset for the card (default: that of the corpus, unknown)",
    )
    return parser


def selector_params(args: argparse.Namespace) -> dict[str, Any]:
    """The selector parameters given on the command line; a flag the method does not take is an error."""
    from mprm_hf.selection.selectors import SELECTORS

    accepted = SELECTORS[args.method].params
    given = {flag: getattr(args, flag) for flag in SELECTOR_FLAGS if getattr(args, flag) is not None}
    for flag in given:
        if SELECTOR_FLAGS[flag] not in accepted:
            raise MPRMError(f"--{flag.replace('_', '-')} does not apply to --method {args.method}")
    return {SELECTOR_FLAGS[flag]: value for flag, value in given.items()}


def run_reference(args: argparse.Namespace) -> tuple[SelectionReport, str]:
    """--format reference: the reference's exact bytes (bis, per-source ratio only)."""
    from mprm_hf.selection.reference import build_reference_subset, column_numpy

    if args.method != "bis":
        raise MPRMError(
            f"--format reference reproduces the reference's BIS selection; --method {args.method} has no reference output"
        )
    if args.budget is not None or args.top_ratio is None:
        raise MPRMError("--format reference needs --top-ratio (the reference has no global budget)")
    alpha = 0.05 if args.alpha is None else args.alpha
    result = build_reference_subset(
        args.annotations,
        args.output,
        alpha=alpha,
        top_ratio=args.top_ratio,
        num_proc=args.num_proc,
        use_cache=not args.no_cache,
        cache_records=args.cache_records,
        progress=not args.quiet,
    )
    table = result.table
    files = column_numpy(table, "file")
    n_scored, n_pos = column_numpy(table, "n_scored"), column_numpy(table, "n_pos")

    def per_file(weights: np.ndarray | None = None, mask: np.ndarray | None = None) -> list[int]:
        chosen = files if mask is None else files[mask]
        weighted = None if weights is None else (weights if mask is None else weights[mask])
        return np.bincount(chosen, weights=weighted, minlength=len(result.files)).astype(np.int64).tolist()

    totals, kept, written = per_file(), per_file(mask=result.kept), per_file(mask=result.written)
    steps_before, positive_before = per_file(n_scored), per_file(n_pos)
    steps_after, positive_after = per_file(n_scored, result.written), per_file(n_pos, result.written)
    rows = [
        SourceRow(
            source=path.stem,
            total=totals[index],
            kept=written[index],
            steps_before=steps_before[index],
            positive_before=positive_before[index],
            steps_after=steps_after[index],
            positive_after=positive_after[index],
            dropped_at_conversion=kept[index] - written[index],
        )
        for index, path in enumerate(result.files)
    ]
    from mprm_hf.selection import scores

    staging = bool(
        args.push_to_hub or args.dry_run
    )  # the histogram is the only user of the per-rollout arrays
    report = SelectionReport(
        selector="bis",
        params={"alpha": alpha, "top_ratio": args.top_ratio, "format": "reference"},
        rows=rows,
        p_pos=scores.p_pos(n_pos, n_scored) if staging else np.zeros(0),
        reliability=scores.reliability(column_numpy(table, "sum_pos"), n_pos) if staging else np.zeros(0),
        bis=result.bis if staging else np.zeros(0),
        bis_alpha=alpha,
        kept_mask=result.written if staging else np.zeros(0, dtype=bool),
        order_note="file order (as the reference)",
    )
    note = "score table from cache" if result.cached else "score table scanned and cached"
    return report, note


def run_stepwise(args: argparse.Namespace) -> tuple[SelectionReport, Any]:
    """jsonl / parquet / arrow: load with datasets, score with a map, select, convert to stepwise records."""
    import pyarrow.compute as pc

    from mprm_hf.data.stepwise import to_stepwise
    from mprm_hf.data.visualprm400k import load_visualprm400k
    from mprm_hf.selection import scores
    from mprm_hf.selection.selectors import select_rollouts

    params = selector_params(args)
    ds, _ = load_visualprm400k(args.annotations, revision=args.revision, num_proc=args.num_proc)
    selection = select_rollouts(
        ds,
        args.method,
        top_ratio=args.top_ratio,
        budget=args.budget,
        num_proc=args.num_proc,
        progress=not args.quiet,
        **params,
    )
    scored = selection.scored
    extra = [name for name in (*scores.SCORE_COLUMNS, "bis", "entropy") if name in scored.column_names]
    chosen = scored.select(selection.indices).remove_columns(extra)
    records, _ = to_stepwise(chosen, threshold=args.threshold, num_proc=args.num_proc)

    table = scored.select_columns(["source", *scores.SCORE_COLUMNS]).with_format("numpy")[:]
    sources = np.asarray(table["source"], dtype=object)
    n_steps, n_pos = np.asarray(table["n_steps"]), np.asarray(table["n_pos"])
    rankable = n_steps > 0
    out_sources = np.asarray(records["source"], dtype=object)
    labels = records.data.table.column("labels")
    per_record_steps = pc.list_value_length(labels).to_numpy(zero_copy_only=False)
    per_record_pos = np.asarray([int(sum(row)) for row in records["labels"]], dtype=np.int64)
    chosen_sources = sources[selection.indices]
    rows = []
    for source in dict.fromkeys(sources.tolist()):
        mine, out = (sources == source) & rankable, out_sources == source
        rows.append(
            SourceRow(
                source=str(source),
                total=int(mine.sum()),
                kept=int(out.sum()),
                steps_before=int(n_steps[mine].sum()),
                positive_before=int(n_pos[mine].sum()),
                steps_after=int(per_record_steps[out].sum()),
                positive_after=int(per_record_pos[out].sum()),
                dropped_at_conversion=int((chosen_sources == source).sum() - out.sum()),
            )
        )
    kept_mask = np.zeros(len(scored), dtype=bool)
    kept_mask[selection.indices] = True
    alpha = float(params.get("alpha", 0.05))
    report = SelectionReport(
        selector=args.method,
        params={
            key: value
            for key, value in {**selection.params, "threshold": args.threshold}.items()
            if value is not None
        },
        rows=rows,
        p_pos=np.asarray(table["p_pos"]),
        reliability=np.asarray(table["reliability"]),
        bis=scores.bis(table["p_pos"], table["reliability"], alpha),
        bis_alpha=alpha,
        kept_mask=kept_mask,
        order_note=selection.order_note,
    )
    write_records(records, args.output, args.format)
    return report, records


def write_records(records: Any, output: Path, fmt: str) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        records.to_json(str(output), lines=True, force_ascii=False)
    elif fmt == "parquet":
        records.to_parquet(str(output))
    else:
        records.save_to_disk(str(output))


def stage_and_push(args: argparse.Namespace, argv: list[str], report: SelectionReport, records: Any) -> None:
    """Write the Hub folder (data + README.md card + histogram); push it unless --dry-run."""
    import shlex
    import tempfile

    from mprm_hf import hub

    folder = args.stage_dir or args.output.with_name(args.output.name + ".hub")
    with tempfile.TemporaryDirectory(prefix="mprm-select-card-") as scratch:
        histogram = report.histogram(Path(scratch) / "selection_histogram.png")
        if args.format in ("jsonl", "reference"):
            files: dict[str, Any] = {"data/train.jsonl": args.output}
            write = None
        elif args.format == "parquet":
            files, write = {"data/train.parquet": args.output}, None
        else:
            files = {}

            def write(staging: Path) -> None:
                (staging / "data").mkdir(parents=True, exist_ok=True)
                records.to_parquet(str(staging / "data" / "train.parquet"))

        files["selection_histogram.png"] = histogram
        info = report.card_info(
            command="mprm-hf select " + shlex.join(argv),
            source_corpus=str(args.annotations),
            source_revision=args.revision,
            histogram_path="selection_histogram.png",
            pretty_name=args.pretty_name,
            license=args.license,
            tags=["reference-format"] if args.format == "reference" else [],
        )
        card = hub.render_dataset_card(**info, repo_id=args.push_to_hub)
        hub.stage_folder(folder, card, files=files, write=write)
    print(f"Hub folder written: {folder}")
    if args.push_to_hub and not args.dry_run:
        url = hub.push_folder(folder, args.push_to_hub, repo_type="dataset", private=args.private)
        print(f"pushed to {args.push_to_hub}: {url}")


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    args = build_parser().parse_args(argv)
    if args.top_ratio is not None and not 0.0 < args.top_ratio <= 1.0:
        raise MPRMError(f"--top-ratio must be in (0, 1], got {args.top_ratio}")
    if args.format == "reference":
        selector_params(args)
        report, note = run_reference(args)
        records = None
    else:
        report, records = run_stepwise(args)
        note = f"{args.format} stepwise records"
    print(report.table())
    print(f"wrote {report.n_kept} rollouts to {args.output} ({note})")
    if args.push_to_hub or args.dry_run:
        stage_and_push(args, argv, report, records)
    return 0
