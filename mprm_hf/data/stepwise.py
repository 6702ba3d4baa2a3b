"""Stepwise training records (docs/definitions.md#stepwise-records): rollouts -> TRL "stepwise supervision" plus images and MC scores.

A record is `{"id", "source", "images", "prompt", "completions", "labels", "mc_scores"}`, made by the one
conversion rule (`mprm_hf.data.rollout.to_rollout`) that `mprm-hf select` writes with too: the prompt is
`question_orig` (else `question`), stripped; each completion is a step, stripped; a step's hard label
is `mc_score > threshold` (threshold 0.0: only steps no MC continuation finished correctly are
negative) and its soft label is the MC score itself.

Drop rule (docs/definitions.md#step-labels asks for one): a rollout is dropped **whole** when it has no image, no steps, or
any step with empty text or a missing / non-numeric score, and (as for every stepwise output) when a
score is not finite or an image entry is not a path inside the corpus folder. Skipping only the bad
step, as the reference's converter does, would show the model a trace with a hole in it and a label
vector that no longer lines up with the response it was annotated on; the reference's BIS script drops
the whole rollout too. Every dropped rollout, and the number of steps it had, is counted by reason in
the `ConversionReport`, with its file and line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from mprm_hf.data import rollout as rules
from mprm_hf.data.locate import locate_dataset
from mprm_hf.data.report import LoadReport
from mprm_hf.errors import MPRMError, first_line

logger = logging.getLogger(__name__)

STEPWISE_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "images": datasets.List(datasets.Value("string")),
        "prompt": datasets.Value("string"),
        "completions": datasets.List(datasets.Value("string")),
        "labels": datasets.List(datasets.Value("bool")),
        "mc_scores": datasets.List(datasets.Value("float64")),
    }
)
TRL_COLUMNS = ("prompt", "completions", "labels")

# Drop reasons, worded for the report table (the conversion rule's).
NO_IMAGE = rules.NO_IMAGE
NO_STEPS = rules.NO_STEPS
EMPTY_STEP_TEXT = rules.EMPTY_STEP_TEXT
BAD_SCORE = rules.BAD_SCORE
NON_FINITE_SCORE = rules.NON_FINITE_SCORE

_DROP_COLUMN = "_drop_reason"
_FIELD_COLUMN = "_drop_field"


class ConversionReport(LoadReport):
    """A `LoadReport` for a conversion: `records_read` rollouts in, `records_kept` records out."""

    SKIPPED_WORD = "dropped"


def _rollout_of_row(row: dict[str, Any], allow_outside_images: bool) -> rules.Rollout | rules.Drop:
    """The conversion rule on one row of `load_visualprm400k` (its values as the record held them)."""
    rollout = rules.to_rollout(
        row.get("image"), row.get("question_orig"), row.get("question"), row.get("steps") or [],
        row.get("mc_scores") or [None] * len(row.get("steps") or []),
    )  # fmt: skip
    if isinstance(rollout, rules.Drop):
        return rollout
    return rules.stepwise_problem(rollout, allow_outside_images=allow_outside_images) or rollout


def drop_reason(record: dict[str, Any], *, allow_outside_images: bool = False) -> tuple[str, str] | None:
    """(reason, field) when the drop rule removes this rollout, else None."""
    rollout = _rollout_of_row(record, allow_outside_images)
    return tuple(rollout) if isinstance(rollout, rules.Drop) else None  # type: ignore[return-value]


def rollout_to_stepwise(
    record: dict[str, Any], *, threshold: float = 0.0, allow_outside_images: bool = False
) -> dict[str, Any]:
    """One VisualPRM400K row (as `load_visualprm400k` returns it) as a stepwise record.

    Raises MPRMError when the drop rule applies: callers converting a whole corpus use `to_stepwise`,
    which counts those rollouts instead.
    """
    rollout = _rollout_of_row(record, allow_outside_images)
    if isinstance(rollout, rules.Drop):
        raise MPRMError(
            f"{record.get('id', '?')}: field '{rollout.field}': {rollout.reason}; the rollout cannot be converted"
        )
    return rules.stepwise_record(
        rollout, id=record.get("id", ""), source=record.get("source", ""),
        image_root=record.get("image_root") or ".", threshold=threshold,
    )  # fmt: skip


def to_stepwise(
    ds: datasets.Dataset,
    *,
    threshold: float = 0.0,
    num_proc: int | None = None,
    allow_outside_images: bool = False,
) -> tuple[datasets.Dataset, ConversionReport]:
    """Convert a VisualPRM400K dataset with `Dataset.map` / `filter`; report what the drop rule removed.

    When nothing is left the result is an empty dataset that still has STEPWISE_FEATURES.
    """
    if len(ds) == 0:  # map adds no columns to an empty dataset
        return _empty_stepwise(), ConversionReport(name="stepwise conversion")
    marked = ds.map(
        _mark_batch,
        batched=True,
        fn_kwargs={"allow_outside_images": allow_outside_images},
        num_proc=num_proc,
        desc="Checking rollouts",
        features=datasets.Features(
            {**ds.features, _DROP_COLUMN: datasets.Value("string"), _FIELD_COLUMN: datasets.Value("string")}
        ),
    )
    report = _conversion_report(marked)
    kept = marked.filter(
        lambda reasons: [r == "" for r in reasons],
        input_columns=[_DROP_COLUMN],
        batched=True,
        num_proc=num_proc,
        desc="Dropping unusable rollouts",
    )
    records = kept.map(
        _to_stepwise_batch,
        batched=True,
        fn_kwargs={"threshold": threshold},
        remove_columns=kept.column_names,
        features=STEPWISE_FEATURES,
        num_proc=num_proc,
        desc="Converting to stepwise records",
    )
    if len(records) == 0:
        records = _empty_stepwise()
    report.records_kept = len(records)
    report.log(logger)
    return records, report


def _empty_stepwise() -> datasets.Dataset:
    return datasets.Dataset.from_dict({name: [] for name in STEPWISE_FEATURES}, features=STEPWISE_FEATURES)


def _rows(batch: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(batch)
    return [dict(zip(names, values, strict=True)) for values in zip(*batch.values(), strict=True)]


def _mark_batch(batch: dict[str, list[Any]], allow_outside_images: bool) -> dict[str, list[Any]]:
    problems = [drop_reason(row, allow_outside_images=allow_outside_images) for row in _rows(batch)]
    batch[_DROP_COLUMN] = [p[0] if p else "" for p in problems]
    batch[_FIELD_COLUMN] = [p[1] if p else "" for p in problems]
    return batch


def _to_stepwise_batch(batch: dict[str, list[Any]], threshold: float) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {name: [] for name in STEPWISE_FEATURES}
    for row in _rows(batch):  # the rows the filter kept pass the rule (outside images were checked there)
        for name, value in rollout_to_stepwise(row, threshold=threshold, allow_outside_images=True).items():
            out[name].append(value)
    return out


def _conversion_report(marked: datasets.Dataset) -> ConversionReport:
    report = ConversionReport(name="stepwise conversion", records_read=len(marked))
    dropped = marked.filter(
        lambda reasons: [r != "" for r in reasons], input_columns=[_DROP_COLUMN], batched=True
    )
    has_location = {"source", "line"} <= set(marked.column_names)
    columns = [_DROP_COLUMN, _FIELD_COLUMN, "steps", "id"] + (["source", "line"] if has_location else [])
    for row in dropped.select_columns(columns):
        file, line = (
            (f"annotations/{row['source']}.jsonl", row["line"]) if has_location else (row["id"], None)
        )
        report.add(
            file, line, row[_FIELD_COLUMN], row[_DROP_COLUMN], action="dropped", steps=len(row["steps"] or [])
        )
    return report


def load_stepwise(path_or_repo: str | Path, *, split: str = "train") -> datasets.Dataset:
    """Stepwise records from our jsonl / parquet / `save_to_disk` folder, or a TRL stepwise dataset.

    A TRL dataset (prompt / completions / labels, no images) gets `id="<name>:<index>"`,
    `images=[]`, `source=""` and `mc_scores` = its labels as floats; columns it has are kept. Lengths are validated: a record whose completions, labels and
    mc_scores disagree is a one-line MPRMError naming the record and the field.
    """
    name = str(path_or_repo)
    ds = _read_any(path_or_repo, split)
    if len(ds) == 0:
        raise MPRMError(f"{name}: holds no records")
    missing = [c for c in TRL_COLUMNS if c not in ds.column_names]
    if missing:
        raise MPRMError(
            f"{name}: not a stepwise dataset: missing field(s) {', '.join(missing)} "
            f"(columns: {', '.join(ds.column_names)})"
        )
    if not isinstance(ds.features["prompt"], datasets.Value) or ds.features["prompt"].dtype not in (
        "string",
        "large_string",
    ):
        raise MPRMError(f"{name}: field 'prompt' must be text, got {ds.features['prompt']}")
    _check_lists(ds, path_or_repo)
    _check_lengths(ds, name)
    _check_labels(ds, path_or_repo)
    images = ds.features.get("images")
    embedded = isinstance(images, (datasets.List, datasets.LargeList)) and isinstance(
        images.feature, datasets.Image
    )
    if (
        images is not None
        and not embedded
        and not (
            isinstance(images, (datasets.List, datasets.LargeList))
            and getattr(images.feature, "dtype", "") in ("string", "large_string", "null")
        )
    ):
        raise MPRMError(f"{name}: field 'images' must be a list of images or image paths, got {images}")
    features = STEPWISE_FEATURES.copy()
    if embedded:  # a subset published with its images: they stay images, decoded when read
        features["images"] = datasets.List(datasets.Image())
    return ds.map(
        _normalise_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={"name": Path(name).name or name},
        remove_columns=ds.column_names,
        features=features,
        desc="Reading stepwise records",
    )


# ---------------------------------------------------------------------------------------------------
# Publishing: images travel with the records, or as paths inside the source corpus
# ---------------------------------------------------------------------------------------------------
IMAGE_MODES = ("embed", "relative")
"""How a published subset holds its images: `embed` (default) puts every image's bytes in the parquet
shards as a `datasets.Image` feature, so `load_dataset(repo)` gives decoded images; `relative` keeps
paths relative to the source corpus's root, which `resolve_images` joins to a copy of the corpus."""


def publishable(ds: datasets.Dataset, *, images: str, image_root: str | Path) -> datasets.Dataset:
    """The stepwise records as they may leave this machine: no path of this disk remains in them."""
    if images not in IMAGE_MODES:
        raise MPRMError(f"unknown image mode {images!r} (one of: {', '.join(IMAGE_MODES)})")
    root = Path(image_root).resolve()

    def relative(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out = []
        for record_id, paths in zip(batch["id"], batch["images"], strict=True):
            names = []
            for position, path in enumerate(paths):
                resolved = Path(path).resolve()
                if not resolved.is_relative_to(root):
                    raise MPRMError(
                        f"record {record_id!r}: field 'images[{position}]' is outside the corpus folder "
                        "and cannot be published as a relative path; publish the images embedded (the default)"
                    )
                names.append(resolved.relative_to(root).as_posix())
            out.append(names)
        return {"images": out}

    if images == "relative":
        return ds.map(relative, batched=True, desc="Making image paths relative")
    from datasets.table import embed_table_storage

    # Embedding keeps each image's bytes and only its file name: no directory of this disk remains.
    ds = ds.cast_column("images", datasets.List(datasets.Image()))
    embedded = ds.with_format("arrow").map(embed_table_storage, batched=True, desc="Embedding images")
    return embedded.with_format()


def write_parquet_shards(ds: datasets.Dataset, folder: str | Path, *, split: str = "train") -> list[Path]:
    """`<split>-XXXXX-of-YYYYY.parquet` shards of at most `datasets.config.MAX_SHARD_SIZE`, the layout
    `push_to_hub` writes and `load_dataset` reads (with the features in the parquet metadata)."""
    from datasets.utils.py_utils import convert_file_size_to_int

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, int(ds.data.nbytes / convert_file_size_to_int(datasets.config.MAX_SHARD_SIZE)) + 1)
    paths = []
    for index in range(n_shards):
        path = folder / f"{split}-{index:05d}-of-{n_shards:05d}.parquet"
        ds.shard(num_shards=n_shards, index=index, contiguous=True).to_parquet(str(path))
        paths.append(path)
    return paths


def resolve_images(
    ds: datasets.Dataset, root: str | Path, *, revision: str | None = None
) -> datasets.Dataset:
    """A subset published with `relative` images, its paths joined to the corpus: a local copy of it
    (`root` a folder) or the Hub repo it came from (each image fetched once into the Hub cache).

        subset = resolve_images(load_dataset("me/bis10", split="train"), "OpenGVLab/VisualPRM400K-v1.1-Raw")
    """
    folder = Path(root).expanduser()
    if folder.is_dir():

        def join(name: str) -> str:
            return str(folder / name)

    else:
        from huggingface_hub import hf_hub_download

        def join(name: str) -> str:
            return hf_hub_download(str(root), name, repo_type="dataset", revision=revision)

    return ds.map(
        lambda batch: {"images": [[join(name) for name in names] for names in batch["images"]]},
        batched=True,
        desc="Resolving images",
    )


def _normalise_batch(batch: dict[str, list[Any]], indices: list[int], name: str) -> dict[str, list[Any]]:
    """Keep what the records have; fill what TRL's format lacks (id, source, images, mc_scores)."""
    labels = batch["labels"]
    return {
        "id": batch["id"] if "id" in batch else [f"{name}:{i}" for i in indices],
        "source": batch["source"] if "source" in batch else [""] * len(indices),
        "images": batch["images"] if "images" in batch else [[] for _ in indices],
        "prompt": batch["prompt"],
        "completions": batch["completions"],
        "labels": [[bool(label) for label in row] for row in labels],
        "mc_scores": batch["mc_scores"]
        if "mc_scores" in batch
        else [[float(label) for label in row] for row in labels],
    }


def _check_lengths(ds: datasets.Dataset, name: str) -> None:
    """Vectorised over the Arrow table: completions, labels (and mc_scores) must agree, and be non-empty."""
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    steps = pc.fill_null(pc.list_value_length(table.column("completions")), 0).to_numpy(zero_copy_only=False)
    if len(steps) and steps.min() == 0:
        index = int((steps == 0).argmax())
        raise MPRMError(f"{name}: record {index}: field 'completions' is empty")
    for column in ("labels", "mc_scores"):
        if column not in ds.column_names:
            continue
        lengths = pc.fill_null(pc.list_value_length(table.column(column)), -1).to_numpy(zero_copy_only=False)
        bad = (lengths != steps).nonzero()[0]
        if len(bad):
            index = int(bad[0])
            raise MPRMError(
                f"{name}: record {index}: field '{column}' has {lengths[index]} entries but "
                f"'completions' has {steps[index]}"
            )


LABEL_VALUES = (True, False, 0, 1)
LIST_FIELDS = ("completions", "labels", "mc_scores")


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of the object lines of a jsonl file (a leading byte-order mark removed),
    for locating a problem the reader found; lines that are not JSON objects are passed over."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                record = orjson.loads(raw.strip().removeprefix(b"\xef\xbb\xbf")) if raw.strip() else None
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield number, record


def _first_line_where(path: Path, bad) -> tuple[int, str] | None:  # noqa: ANN001 - a predicate on a record
    """(line, field) of the first jsonl record for which `bad(record)` names a field."""
    for number, record in _jsonl_records(path):
        field = bad(record)
        if field:
            return number, field
    return None


def _check_lists(ds: datasets.Dataset, path_or_repo: str | Path) -> None:
    """completions, labels and mc_scores must be lists in every record (a null or a number is not)."""
    for column in LIST_FIELDS:
        feature = ds.features.get(column)
        if feature is None or (
            isinstance(feature, (datasets.List, datasets.LargeList))
            and ds.data.table.column(column).null_count == 0
        ):
            continue
        path = Path(path_or_repo)
        where = None
        if path.is_file() and path.suffix in (".jsonl", ".json"):
            where = _first_line_where(
                path, lambda r, c=column: c if c in r and not isinstance(r[c], list) else ""
            )
        if where is not None:
            raise MPRMError(f"{path}:{where[0]}: field '{where[1]}' must be a list")
        raise MPRMError(f"{path_or_repo}: field '{column}' must be a list in every record, got {feature}")


def _first_bad_label_line(path: Path) -> tuple[int, int, object] | None:
    """(line, step, value) of the first label that is neither a boolean nor 0 / 1, in a jsonl file."""
    for number, record in _jsonl_records(path):
        labels = record.get("labels")
        for step, value in enumerate(labels if isinstance(labels, list) else []):
            if type(value) not in (bool, int, float) or value not in LABEL_VALUES:
                return number, step, value
    return None


def _check_labels(ds: datasets.Dataset, path_or_repo: str | Path) -> None:
    """Labels are booleans (or 0 / 1): "no" or 2 must not silently become True."""
    feature = ds.features["labels"]
    dtype = getattr(getattr(feature, "feature", None), "dtype", "")
    if dtype == "bool":
        return
    values = pc.list_flatten(ds.data.table.column("labels"))
    if dtype.startswith(("int", "uint", "float")) and pc.all(
        pc.is_in(values, pa.array([0, 1]).cast(values.type))
    ).as_py() in (True, None):
        return
    path = Path(path_or_repo)
    where = _first_bad_label_line(path) if path.is_file() and path.suffix in (".jsonl", ".json") else None
    if where is not None:
        line, step, value = where
        raise MPRMError(
            f"{path}:{line}: field 'labels[{step}]' must be true or false (or 0 / 1), got {value!r}"
        )
    raise MPRMError(f"{path_or_repo}: field 'labels' must hold true / false (or 0 / 1), got {feature}")


def _check_text_file(path: Path) -> None:
    """Every line of a jsonl file must be UTF-8 and one JSON object, and there must be one: checked here,
    in one orjson pass, so that a broken line is one located error, not pyarrow's logged error and a
    `DatasetGenerationError`, or bad bytes that surface later as a raw UnicodeDecodeError."""
    seen = False
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise MPRMError(
                    f"{path}:{number}: not valid UTF-8 ({error.reason} at byte {error.start})"
                ) from None
            try:
                record = orjson.loads(raw.strip().removeprefix(b"\xef\xbb\xbf"))
            except orjson.JSONDecodeError:
                raise MPRMError(f"{path}:{number}: not a JSON line (truncated?)") from None
            if not isinstance(record, dict):
                raise MPRMError(
                    f"{path}:{number}: a record must be a JSON object, got {type(record).__name__}"
                )
            seen = True
    if not seen:
        raise MPRMError(f"{path}: holds no records (empty file)")


def _read_any(path_or_repo: str | Path, split: str) -> datasets.Dataset:
    """A jsonl / json / parquet file, a `save_to_disk` folder, a folder of data files, or a Hub id."""
    path = Path(path_or_repo).expanduser()
    try:
        if path.is_file():
            kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}.get(
                path.suffix
            )
            if kind is None:
                raise MPRMError(f"{path}: unknown file type (expected .jsonl, .json, .parquet or .arrow)")
            if path.suffix == ".jsonl":  # a .json file may be one JSON array, not lines
                _check_text_file(path)
            try:
                return datasets.load_dataset(kind, data_files=str(path), split="train")
            except Exception as error:  # noqa: BLE001 - datasets wraps the reader's errors
                raise MPRMError(f"{path}: cannot read a stepwise dataset ({first_line(error)})") from None
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise MPRMError(f"{path}: no split {split!r} (splits: {', '.join(loaded)})")
                return loaded[split]
            return loaded
        folder = (
            path
            if path.is_dir()
            else locate_dataset(path_or_repo, allow_patterns=None, what="stepwise dataset")
        )
        return datasets.load_dataset(str(folder), split=split)
    except MPRMError:
        raise
    except (ValueError, FileNotFoundError, OSError, datasets.exceptions.DatasetNotFoundError) as err:
        raise MPRMError(f"{path_or_repo}: cannot read a stepwise dataset ({first_line(err)})") from None
