"""Writers: only the kept rollouts are read again (by byte span) and converted, into the reference's PRM
jsonl (byte for byte what `build_bis_subset.py` writes), stepwise records as jsonl, parquet or an Arrow
folder (docs/definitions.md#stepwise-records), every one written atomically: a unique temporary beside the target, then a rename.

One conversion rule serves every format (`Rollout`, docs/definitions.md#selection): a kept rollout is dropped, not replaced,
when its image is empty, it has no steps, or a step has empty text or a non-numeric score; the question
is `question_orig`, else `question`, else `""`, passed through `str()` and stripped. Stepwise formats
also drop (and count) a rollout with a non-finite score, which the reference keeps but no soft label can
be trained on. Kept lines are read in chunks of `CHUNK_ROWS`, each in one typed `msgspec` call where
every line has the common shape; any other line is read rule by rule with `json`.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from json.encoder import encode_basestring  # the exact string encoder json.dumps(ensure_ascii=False) uses
from pathlib import Path

import msgspec
import numpy as np
import orjson
import pyarrow as pa

from mprm_hf.errors import MPRMError
from mprm_hf.fileio import atomic_output
from mprm_hf.selection.scan import (
    _DECODE_ERRORS,
    ScoreTable,
    _loads,
    _numeric,
    _progress_bar,
    _record_and_scores,
    _where,
)

FORMATS = ("jsonl", "parquet", "arrow", "reference")
CHUNK_ROWS = 500
"""Kept lines converted per task: one typed msgspec call, little memory per worker."""

NO_IMAGE = "no image"
NO_STEPS = "no steps"
EMPTY_STEP_TEXT = "empty step text"
BAD_SCORE = "missing or non-numeric score"
NON_FINITE_SCORE = "non-finite score (stepwise formats)"
IMAGE_OUTSIDE = "image path outside the corpus folder (stepwise formats)"
DROP_REASONS = (NO_IMAGE, NO_STEPS, EMPTY_STEP_TEXT, BAD_SCORE, NON_FINITE_SCORE, IMAGE_OUTSIDE)


def _image_names(image: object) -> list[str]:
    return [image] if isinstance(image, str) else [str(item) for item in image]  # type: ignore[union-attr]


def _outside(names: list[str]) -> bool:
    """An image path that is absolute or climbs out with `..`: a corpus must not point at /etc/passwd."""
    return any(os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == ".." for name in names)


class _PRMStep(msgspec.Struct, gc=False):
    step: str | None = None
    score: float | None = None


class _PRMRecord(msgspec.Struct, gc=False):
    image: str | list[str] = ""
    question_orig: str | None = None
    question: str | None = None
    steps_with_score: list[_PRMStep] | None = None


_decode_prm = msgspec.json.Decoder(_PRMRecord).decode
_decode_prm_lines = msgspec.json.Decoder(_PRMRecord).decode_lines
"""Read what a converted line needs (image, question, step texts and scores), for the common shape
only: any other type raises, and the line is read rule by rule."""
_SHAPE_ERRORS = (TypeError, ValueError, KeyError, AttributeError, OverflowError)


@dataclass
class Rollout:
    """A kept rollout the conversion rule lets through: what every format writes."""

    image: object  # a non-empty string or list, as the record holds it
    question: str  # stripped
    texts: list[str]  # stripped, non-empty
    scores: list[float]
    exact: bool = False  # read by `json` (rule by rule): write the reference's line with `json`'s encoder
    finite: bool = False  # every score is known to be finite (msgspec reads no NaN or Infinity)


# --------------------------------------------------------------------------------------------- rule
def _typed_rollout(record: _PRMRecord) -> Rollout | str:
    """The rule for a record msgspec typed (string or null texts, finite float or null scores): the
    reference can only drop such a record, never crash on it. Comprehensions first (the cost of a
    warm run is this function); the reason is worked out only for a rollout that is dropped."""
    image, steps = record.image, record.steps_with_score
    if not image:
        return NO_IMAGE
    if not steps:
        return NO_STEPS
    texts = [(step.step or "").strip() for step in steps]
    scores = [step.score for step in steps]
    if all(texts) and None not in scores:
        return Rollout(
            image, (record.question_orig or record.question or "").strip(), texts, scores, finite=True
        )
    first_empty = next((index for index, text in enumerate(texts) if not text), len(texts))
    first_null = scores.index(None) if None in scores else len(scores)
    return EMPTY_STEP_TEXT if first_empty <= first_null else BAD_SCORE


def _careful_rollout(raw: bytes, path: Path, offset: int) -> Rollout | str:
    """The reference's rule step by step on a line parsed as `json.loads` parses it, its crashes turned
    into one-line errors naming the file, line and field."""
    stripped = raw.strip()
    record, _, parsed_by_json = _record_and_scores(stripped, path, offset)
    if not parsed_by_json:  # a value whose text depends on how a huge integer was parsed: `json` decides
        record = _loads(stripped, path, offset, exact=True)
    image = record.get("image", "")  # type: ignore[union-attr]
    if not image:
        return NO_IMAGE
    steps = record.get("steps_with_score") or []  # type: ignore[union-attr]
    if not steps:
        return NO_STEPS
    texts, scores = [], []
    for index, step in enumerate(steps):
        text = step.get("step") or ""
        if type(text) is not str:
            raise MPRMError(
                f"{_where(path, offset)}: field 'steps_with_score[{index}].step' must be a string, "
                f"got {type(text).__name__}"
            )
        text = text.strip()
        if not text:
            return EMPTY_STEP_TEXT
        value = _numeric(step.get("score"), path, offset, index)
        if value is None:
            return BAD_SCORE
        texts.append(text)
        scores.append(value)
    question = str(record.get("question_orig") or record.get("question") or "").strip()  # type: ignore[union-attr]
    try:  # only `json` lets lone surrogates through; the reference crashes writing them
        "".join([question, *texts, json.dumps(image, ensure_ascii=False)]).encode("utf-8")
    except UnicodeEncodeError:
        raise MPRMError(
            f"{_where(path, offset)}: text holds a lone surrogate escape and cannot be written as UTF-8"
        ) from None
    return Rollout(image, question, texts, scores, exact=True)


def read_rollouts(path: Path, offsets: Sequence[int], lengths: Sequence[int]) -> list[Rollout | str]:
    """Kept lines of one file, by byte span, through the rule: a Rollout or the reason it is dropped.
    One msgspec call for the chunk when every line has the common shape, else line by line."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        raws = [os.pread(descriptor, length, offset) for offset, length in zip(offsets, lengths, strict=True)]
    finally:
        os.close(descriptor)
    try:  # a ranked line holds no newline and one JSON value: one record per line
        records = _decode_prm_lines(b"\n".join(raws))
    except _DECODE_ERRORS:
        records = []
    out: list[Rollout | str] = []
    for index, (raw, offset) in enumerate(zip(raws, offsets, strict=True)):
        try:
            record = records[index] if len(records) == len(raws) else _decode_prm(raw)
            out.append(_typed_rollout(record))
        except (*_DECODE_ERRORS, *_SHAPE_ERRORS):
            out.append(_careful_rollout(raw, path, offset))
    return out


# -------------------------------------------------------------------------------------------- lines
def reference_line(rollout: Rollout) -> bytes:
    """The reference's PRM record + "\\n" as UTF-8, exactly as `json.dumps(..., ensure_ascii=False)`."""
    labels = [b"1.0" if score > 0.0 else b"0.0" for score in rollout.scores]
    if not rollout.exact and type(rollout.image) is str:
        # orjson.dumps of a string is encode_basestring's text, encoded (a test checks every code point)
        human = "Question: " + rollout.question + "\nProcess: " + "<prm>\n\n".join(rollout.texts) + "<prm>"
        return b"".join(
            (
                b'{"image": ',
                orjson.dumps(rollout.image),
                b', "conversations": [{"from": "human", "value": ',
                orjson.dumps(human),
                b'}, {"from": "gpt", "value": [',
                b", ".join(labels),
                b"]}]}\n",
            )
        )
    image = rollout.image
    image_json = encode_basestring(image) if type(image) is str else json.dumps(image, ensure_ascii=False)
    human = f"Question: {rollout.question}\nProcess: " + "\n\n".join(text + "<prm>" for text in rollout.texts)
    line = (
        '{"image": '
        + image_json
        + ', "conversations": [{"from": "human", "value": '
        + encode_basestring(human)
        + '}, {"from": "gpt", "value": ['
        + ", ".join(label.decode() for label in labels)
        + "]}]}\n"
    )
    return line.encode("utf-8")


def image_paths(rollout: Rollout, image_root: str) -> list[str]:
    """The rollout's image paths joined to the corpus root (the annotations' parent), by `os.path.join`'s
    rule (an absolute path stays as it is), without a call per image."""
    prefix = image_root.rstrip("/") + "/"
    return [item if item.startswith("/") else prefix + item for item in _image_names(rollout.image)]


def stepwise_record(rollout: Rollout, *, id: str, source: str, image_root: str, threshold: float) -> dict:
    """docs/definitions.md#stepwise-records: {id, source, images, prompt, completions, labels, mc_scores}; a step is positive iff
    its MC score > threshold."""
    return {
        "id": id,
        "source": source,
        "images": image_paths(rollout, image_root),
        "prompt": rollout.question,
        "completions": rollout.texts,
        "labels": [score > threshold for score in rollout.scores],
        "mc_scores": rollout.scores,
    }


STEPWISE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("images", pa.list_(pa.string())),
        ("prompt", pa.string()),
        ("completions", pa.list_(pa.string())),
        ("labels", pa.list_(pa.bool_())),
        ("mc_scores", pa.list_(pa.float64())),
    ]
)


# ------------------------------------------------------------------------------------------ convert
@dataclass
class Chunk:
    """Kept rows of one file, converted by one worker."""

    file: int
    path: str
    source: str
    image_root: str
    rows: np.ndarray
    lines: list[int]
    offsets: list[int]
    lengths: list[int]


@dataclass
class Converted:
    """What a chunk gave: its output lines (PRM lines, or stepwise records as JSON lines, which parquet
    and Arrow read with Arrow's own JSON reader) and, per row, why it was dropped ("" when written) and
    its positive step labels."""

    data: bytes
    reasons: list[str]
    positives: list[int]


def convert_chunk(task: tuple[Chunk, str, float, bool]) -> Converted:
    """Convert one chunk into `fmt` (a worker's unit of output work)."""
    chunk, fmt, threshold, allow_outside = task
    rollouts = read_rollouts(Path(chunk.path), chunk.offsets, chunk.lengths)
    reasons: list[str] = []
    positives: list[int] = []
    kept: list[Rollout] = []
    kept_lines: list[int] = []
    for rollout, line in zip(rollouts, chunk.lines, strict=True):
        finite = isinstance(rollout, str) or rollout.finite or all(map(math.isfinite, rollout.scores))
        if not finite and fmt != "reference":
            rollout = NON_FINITE_SCORE
        elif (
            fmt != "reference"
            and not allow_outside
            and not isinstance(rollout, str)
            and _outside(_image_names(rollout.image))
        ):
            rollout = IMAGE_OUTSIDE
        if isinstance(rollout, str):
            reasons.append(rollout)
            positives.append(0)
            continue
        reasons.append("")
        # at threshold 0 the table's n_pos is the count (write_subset fills it in): no loop per step
        positives.append(
            0
            if fmt == "reference" or threshold == 0.0
            else sum(score > threshold for score in rollout.scores)
        )
        kept.append(rollout)
        kept_lines.append(line)
    if fmt == "reference":
        return Converted(b"".join(map(reference_line, kept)), reasons, positives)
    records = [
        stepwise_record(
            rollout,
            id=f"{chunk.source}:{line}",
            source=chunk.source,
            image_root=chunk.image_root,
            threshold=threshold,
        )  # fmt: skip
        for rollout, line in zip(kept, kept_lines, strict=True)
    ]
    return Converted(b"".join(orjson.dumps(record) + b"\n" for record in records), reasons, positives)


def chunks_of(table: ScoreTable, rows: np.ndarray, image_root: str) -> list[Chunk]:
    """`rows` (in output order) cut into per-file chunks of at most CHUNK_ROWS consecutive rows."""
    file_of = table.column("file")[rows]
    lines, offsets, lengths = (table.column(name)[rows] for name in ("line", "offset", "length"))
    chunks = []
    start = 0
    while start < len(rows):
        stop = start + 1
        while stop < len(rows) and stop - start < CHUNK_ROWS and file_of[stop] == file_of[start]:
            stop += 1
        file_index = int(file_of[start])
        chunks.append(
            Chunk(
                file_index,
                str(table.files[file_index]),
                table.files[file_index].stem,
                image_root,
                rows[start:stop],
                lines[start:stop].tolist(),
                offsets[start:stop].tolist(),
                lengths[start:stop].tolist(),
            )  # fmt: skip
        )
        start = stop
    return chunks


def _converted(tasks: list, num_proc: int | None) -> Iterator[Converted]:
    """`convert_chunk` over the tasks in order, on a fork pool when there is more than one chunk."""
    processes = max(1, min(num_proc or os.cpu_count() or 1, len(tasks)))
    if processes == 1:
        yield from map(convert_chunk, tasks)
        return
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as executor:
        yield from executor.map(convert_chunk, tasks)


# -------------------------------------------------------------------------------------------- write
@dataclass
class WriteResult:
    """Per kept row (in output order): why it was dropped ("" when written) and its positive labels."""

    reasons: np.ndarray
    positives: np.ndarray

    @property
    def written(self) -> np.ndarray:
        return self.reasons == ""


def write_subset(
    table: ScoreTable,
    rows: np.ndarray,
    output: str | os.PathLike,
    *,
    fmt: str = "jsonl",
    threshold: float = 0.0,
    image_root: str | None = None,
    allow_outside_images: bool = False,
    num_proc: int | None = None,
    progress: bool = True,
) -> WriteResult:
    """Convert the kept `rows` of `table` (in output order) and write them to `output` in `fmt`."""
    if fmt not in FORMATS:
        raise MPRMError(f"unknown format {fmt!r} (one of: {', '.join(FORMATS)})")
    if not math.isfinite(threshold):
        raise MPRMError(f"--threshold must be a finite number, got {threshold!r}")
    output = Path(output)
    root = image_root if image_root is not None else str(table.files[0].parent.parent)
    tasks = [
        (chunk, fmt, threshold, allow_outside_images)
        for chunk in chunks_of(table, np.asarray(rows, dtype=np.int64), root)
    ]
    reasons: list[str] = []
    positives: list[int] = []
    with (
        atomic_output(output, folder=fmt == "arrow") as temporary,
        _progress_bar(progress, total=len(rows), desc="Writing rollouts", unit="rollout") as bar,
    ):
        # streamed part by part: memory holds one part's output, whatever the subset's size
        scratch = temporary / "records.arrow" if fmt == "arrow" else temporary
        with _sink(scratch, fmt) as write:
            for part in _converted(tasks, num_proc):
                write(part.data)
                reasons += part.reasons
                positives += part.positives
                bar.update(len(part.reasons))
        if fmt == "arrow":
            _save_arrow_folder(scratch, temporary)
    positive = np.asarray(positives, dtype=np.int64)
    if fmt == "reference" or threshold == 0.0:
        positive = table.column("n_pos")[np.asarray(rows, dtype=np.int64)].astype(np.int64)
    return WriteResult(np.asarray(reasons, dtype=object), positive)


def _read_json_lines(data: bytes) -> pa.Table:
    """Stepwise JSON lines as an Arrow table of STEPWISE_SCHEMA, by Arrow's C++ reader (building the
    table from Python lists would import pandas, +0.3 s)."""
    import pyarrow.json as pj

    if not data:
        return STEPWISE_SCHEMA.empty_table()
    options = pj.ParseOptions(explicit_schema=STEPWISE_SCHEMA, newlines_in_values=False)
    read = pj.read_json(
        pa.BufferReader(data), parse_options=options, read_options=pj.ReadOptions(block_size=1 << 24)
    )
    return read.select(STEPWISE_SCHEMA.names).cast(STEPWISE_SCHEMA)


@contextlib.contextmanager
def _sink(path: Path, fmt: str) -> Iterator[Callable[[bytes], object]]:
    """Where a part's output lines go: the file itself (reference, jsonl), a parquet writer, or (for an
    Arrow folder) an Arrow stream that `datasets` memory-maps; stepwise lines become Arrow rows first."""
    if fmt in ("jsonl", "reference"):
        with path.open("wb") as handle:
            yield handle.write
        return
    if fmt == "parquet":
        import pyarrow.parquet as pq

        writer = pq.ParquetWriter(path, STEPWISE_SCHEMA)
    else:
        writer = pa.ipc.new_stream(pa.OSFile(str(path), "wb"), STEPWISE_SCHEMA)
    with writer:
        yield lambda data: writer.write_table(_read_json_lines(data))


def _save_arrow_folder(records: Path, folder: Path) -> None:
    """`Dataset.save_to_disk` of the streamed records, with the stepwise features (what
    `load_from_disk` reads); the stream is memory-mapped, not loaded, and removed after."""
    import datasets

    from mprm_hf.data.stepwise import STEPWISE_FEATURES

    dataset = datasets.Dataset.from_file(str(records), info=datasets.DatasetInfo(features=STEPWISE_FEATURES))
    staged = folder / "dataset"
    dataset.save_to_disk(str(staged))
    del dataset
    records.unlink()
    for item in staged.iterdir():
        item.rename(folder / item.name)
    staged.rmdir()
