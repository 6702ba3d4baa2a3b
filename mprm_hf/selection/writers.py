"""Writers: only the kept rollouts are read again (by byte span) and converted by the one rule
(`mprm_hf.data.rollout`), into the reference's PRM jsonl (byte for byte what `build_bis_subset.py`
writes) or stepwise records as jsonl, parquet or an Arrow folder (docs/definitions.md#stepwise-records).

Kept rows go to a process pool in chunks of `scan.CHUNK_ROWS` lines of one file; each chunk comes back
as the output's bytes (stepwise records as JSON lines, which parquet and Arrow read with Arrow's own
JSON reader) and, per row, why it was dropped. Every output is written to a unique temporary beside the
target, then renamed (an Arrow folder replaces a folder with two renames), so a failed or killed run
leaves the old output as it was; memory holds one chunk's output, whatever the subset's size.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

from mprm_hf.data import rollout as rules
from mprm_hf.errors import MPRMError
from mprm_hf.fileio import atomic_output
from mprm_hf.selection.scan import ScoreTable, progress_bar, read_rollouts, run_tasks

FORMATS = ("jsonl", "parquet", "arrow", "reference")
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


@dataclass(frozen=True)
class Chunk:
    """Kept rows of one file, and how to write them: a worker's unit of work."""

    path: str
    source: str
    image_root: str
    lines: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    fmt: str
    threshold: float
    allow_outside_images: bool


def convert_chunk(chunk: Chunk) -> tuple[bytes, list[str], list[int]]:
    """The chunk's output lines and, per row, why it was dropped ("" when written) and its positive
    labels (stepwise records)."""
    stepwise = chunk.fmt != "reference"
    reasons, positives, out = [], [], []
    for rollout, line in zip(
        read_rollouts(chunk.path, chunk.offsets, chunk.lengths), chunk.lines.tolist(), strict=True
    ):
        problem = rollout if isinstance(rollout, rules.Drop) else None
        if problem is None and stepwise:
            problem = rules.stepwise_problem(rollout, allow_outside_images=chunk.allow_outside_images)
        reasons.append(problem.reason if problem else "")
        positives.append(0)
        if problem:
            continue
        if stepwise:
            record = rules.stepwise_record(
                rollout, id=f"{chunk.source}:{line}", source=chunk.source, image_root=chunk.image_root,
                threshold=chunk.threshold,
            )  # fmt: skip
            out.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
            positives[-1] = sum(record["labels"])
        else:
            out.append(rules.reference_line(rollout))
    return b"".join(out), reasons, positives


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
    output, rows = Path(output), np.asarray(rows, dtype=np.int64)
    root = image_root if image_root is not None else str(table.files[0].parent.parent)
    lines, offsets, lengths = (table.column(name) for name in ("line", "offset", "length"))
    chunks = [
        Chunk(str(table.files[file]), table.files[file].stem, root, lines[part], offsets[part], lengths[part], fmt,
              threshold, allow_outside_images)
        for file, part in table.chunks(rows)
    ]  # fmt: skip
    reasons: list[str] = []
    positives: list[int] = []
    with (
        atomic_output(output, folder=fmt == "arrow") as temporary,
        progress_bar(progress, total=len(rows), desc="Writing rollouts", unit="rollout") as bar,
    ):
        scratch = temporary / "records.arrow" if fmt == "arrow" else temporary
        with _sink(scratch, fmt) as write:
            for data, part, counts in run_tasks(convert_chunk, chunks, num_proc):
                write(data)
                reasons += part
                positives += counts
                bar.update(len(part))
        if fmt == "arrow":
            _save_arrow_folder(scratch, temporary)
    # the reference's labels are the table's: a kept rollout has only numeric scores
    positive = table.column("n_pos")[rows] if fmt == "reference" else np.asarray(positives)
    return WriteResult(np.asarray(reasons, dtype=object), positive.astype(np.int64))


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
    """Where a chunk's output lines go: the file itself (reference, jsonl), a parquet writer, or (for an
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
