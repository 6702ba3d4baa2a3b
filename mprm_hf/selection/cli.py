"""`mprm-hf select`: score rollouts, keep a subset, write it (stepwise records or the reference's PRM
jsonl), print the per-source table, and stage / push it to the Hub with a dataset card."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mprm_hf.errors import MPRMError
from mprm_hf.selection.scores import DEFAULT_ALPHA
from mprm_hf.selection.selectors import SELECTORS
from mprm_hf.selection.writers import FORMATS

if TYPE_CHECKING:
    from mprm_hf.selection.subset import SubsetResult

# SelectArguments field -> selector parameter
SELECTOR_FLAGS = {
    "alpha": "alpha",
    "seed": "seed",
    "entropy_model": "model",
    "entropy_drop": "drop",
    "curriculum": "curriculum",
    "step_format": "step_format",
    "batch_size": "batch_size",
}


@dataclass(kw_only=True)
class SelectArguments:
    """The options of `mprm-hf select` (flags, or the keys of a recipe: recipes/select/)."""

    annotations: str = field(
        metadata={"help": "annotations/ folder (or the corpus root, or a Hub id)", "metavar": "PATH"}
    )
    method: str = field(default="bis", metadata={"help": "selector", "choices": list(SELECTORS)})
    # budget (one of)
    top_ratio: float | None = field(
        default=None,
        metadata={
            "help": "budget: keep max(1, floor(m * R)) of the m rollouts of each source",
            "metavar": "R",
        },
    )
    budget: int | None = field(
        default=None, metadata={"help": "budget: keep N rollouts over all sources", "metavar": "N"}
    )
    # selector parameters
    alpha: float | None = field(
        default=None,
        metadata={
            "help": f"bis: smoothing term alpha (default {DEFAULT_ALPHA}, the reference script's; the paper uses "
            "0.2 for a 10% subset and 0.05 for 25%)"
        },
    )
    seed: int | None = field(default=None, metadata={"help": "random / mixed: sampling seed (default 0)"})
    entropy_model: str | None = field(
        default=None,
        metadata={"help": "entropy: PRM (path or Hub id) whose step predictions give the entropy"},
    )
    entropy_drop: float | None = field(
        default=None,
        metadata={"help": "entropy: fraction of highest-entropy rollouts dropped per source (default 0.1)"},
    )
    curriculum: bool = field(
        default=False, metadata={"help": "entropy: order the output from low to high entropy"}
    )
    step_format: str | None = field(
        default=None, metadata={"help": "entropy: step format of the scoring model (default prm-token)"}
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "entropy: traces per forward pass (default 8)"}
    )
    # output
    output: Path = field(
        metadata={"help": "output file (jsonl, parquet, reference) or folder (arrow)", "metavar": "PATH"}
    )
    format: str = field(
        default="jsonl",
        metadata={
            "help": "stepwise records as jsonl/parquet/arrow, or the reference's PRM jsonl",
            "choices": list(FORMATS),
        },
    )
    threshold: float = field(
        default=0.0, metadata={"help": "stepwise: a step is positive iff its MC score > threshold"}
    )
    num_proc: int | None = field(
        default=None, metadata={"help": "processes for the scan and the conversion (default: all cores)"}
    )
    no_cache: bool = field(
        default=False, metadata={"help": "scan the corpus again instead of using the cached score table"}
    )
    allow_outside_images: bool = field(
        default=False,
        metadata={
            "help": "stepwise: keep rollouts whose image path is absolute or leaves the corpus folder (default: "
            "drop and report them)"
        },
    )
    revision: str | None = field(
        default=None, metadata={"help": "revision of the source corpus when it is a Hub id"}
    )
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})
    # Hub
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "push the subset with its dataset card to this dataset repo", "metavar": "REPO"},
    )
    dry_run: bool = field(
        default=False, metadata={"help": "write the folder that would be pushed, push nothing"}
    )
    hub_images: str = field(
        default="embed",
        metadata={
            "help": "how the Hub folder holds the images: embedded in the parquet shards (default), or as paths "
            "relative to the source corpus (see mprm_hf.data.stepwise.resolve_images)",
            "choices": ["embed", "relative"],
        },
    )
    stage_dir: Path | None = field(
        default=None,
        metadata={"help": "where the Hub folder is written (default: OUTPUT.hub)", "metavar": "PATH"},
    )
    private: bool = field(default=False, metadata={"help": "create the Hub repo private"})
    pretty_name: str | None = field(default=None, metadata={"help": "dataset card title"})
    license: str | None = field(
        default=None,
        metadata={"help": "license of the subset for the card (default: that of the corpus, unknown)"},
    )


def parse_args(argv: list[str]) -> SelectArguments:
    """The options from a recipe and flags; a budget given twice is refused before the corpus is read."""
    from mprm_hf.recipes import parse_recipe

    (args,) = parse_recipe(
        (SelectArguments,), argv, prog="mprm-hf select", description=__doc__.split("\n\n")[0]
    )
    if args.top_ratio is not None and args.budget is not None:
        raise MPRMError("give either --top-ratio or --budget, not both")
    return args


def selector_params(args: SelectArguments) -> dict[str, Any]:
    """The selector parameters given on the command line; a flag the method does not take is an error."""
    from mprm_hf.selection.selectors import SELECTORS

    accepted = SELECTORS[args.method].params
    # an unset parameter is None (curriculum: False), so that the selector's default applies; 0 is a value
    values = {flag: getattr(args, flag) for flag in SELECTOR_FLAGS}
    given = {flag: value for flag, value in values.items() if value is not None and value is not False}
    for flag in given:
        if SELECTOR_FLAGS[flag] not in accepted:
            raise MPRMError(f"--{flag.replace('_', '-')} does not apply to --method {args.method}")
    return {SELECTOR_FLAGS[flag]: value for flag, value in given.items()}


def stage_and_push(args: SelectArguments, argv: list[str], result: SubsetResult) -> None:
    """Write the Hub folder (data, selection.json, histogram, README.md card); push it unless --dry-run.

    Stepwise records are staged as parquet shards with their images embedded (or, with
    `--hub-images relative`, as paths inside the source corpus): nothing staged names this disk."""
    import tempfile

    from mprm_hf import hub
    from mprm_hf.data.stepwise import load_stepwise, publishable, write_parquet_shards
    from mprm_hf.selection.provenance import SELECTION_FILE, selection_record, write_selection

    folder = args.stage_dir or args.output.with_name(args.output.name + ".hub")
    image_root = result.files[0].parent.parent  # image paths are relative to the corpus root
    with tempfile.TemporaryDirectory(prefix="mprm-select-card-") as scratch:
        histogram = result.report.histogram(Path(scratch) / "selection_histogram.png")
        files: dict[str, Any] = {"selection_histogram.png": histogram}
        if args.format == "reference":  # the reference's own records: image names relative to the corpus
            files["data/train.jsonl"] = args.output
            write = None
        else:

            def write(staging: Path) -> None:
                records = publishable(
                    load_stepwise(args.output), images=args.hub_images, image_root=image_root
                )
                write_parquet_shards(records, staging / "data")

        record = selection_record(result, corpus=args.annotations, revision=args.revision)
        record["hub_images"] = None if args.format == "reference" else args.hub_images
        files[SELECTION_FILE] = write_selection(Path(scratch) / SELECTION_FILE, record)
        info = result.report.card_info(
            command=hub.portable_command(["mprm-hf", "select", *argv]),
            source_corpus=record["corpus"],
            source_revision=args.revision,
            histogram_path="selection_histogram.png",
            pretty_name=args.pretty_name,
            license=args.license,
            tags=["reference-format"] if args.format == "reference" else [],
        )
        card = hub.render_dataset_card(
            **info, repo_id=args.push_to_hub, data_format=args.format, hub_images=record["hub_images"]
        )
        hub.stage_folder(folder, card, files=files, write=write)
    print(f"Hub folder written: {folder}")
    if args.push_to_hub and not args.dry_run:
        url = hub.push_folder(folder, args.push_to_hub, repo_type="dataset", private=args.private)
        print(f"pushed to {args.push_to_hub}: {url}")


def main(argv: list[str] | None = None) -> int:
    from mprm_hf.selection.subset import build_subset

    argv = list(argv or [])
    args = parse_args(argv)
    result = build_subset(
        args.annotations,
        args.output,
        method=args.method,
        fmt=args.format,
        top_ratio=args.top_ratio,
        budget=args.budget,
        threshold=args.threshold,
        allow_outside_images=args.allow_outside_images,
        num_proc=args.num_proc,
        use_cache=not args.no_cache,
        revision=args.revision,
        progress=not args.quiet,
        **selector_params(args),
    )
    print(result.report.table())
    origin = "score table from cache" if result.cached else "score table scanned and cached"
    print(f"wrote {result.n_written} rollouts to {args.output} ({args.format}; {origin})")
    if args.push_to_hub or args.dry_run:
        stage_and_push(args, argv, result)
    return 0
