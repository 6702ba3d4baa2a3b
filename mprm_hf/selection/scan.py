"""The scan: every annotation file read once into a per-rollout score table, cached.

`scan_corpus(DIR)` applies the reference's (`build_bis_subset.py`) parsing rules, so a rollout is in
the table exactly when the reference would rank it, and counts every line it skips by reason, with
file and line. The table holds, per ranked rollout: its file, line, byte span, `n_steps`, `n_scored`
(steps with a numeric score), `n_pos` and `sum_pos` (float64, summed in the reference's order). It is
an Arrow stream file in the `datasets` cache (`datasets.Dataset.from_file` loads it), keyed on the
files' paths, sizes and mtimes: a new alpha, ratio, method or format never reads the corpus again, an
edited corpus is scanned again, and storing a corpus's new table removes its stale ones.

Rules copied from the reference, all of them load-bearing for byte equality:

* files: `sorted(DIR.glob("*.jsonl"))`; lines split with Python's universal newlines (`\\n`, `\\r\\n`,
  lone `\\r`), stripped with `str.strip()`; blank lines and lines `json.loads` rejects are not ranked;
* a score is *numeric* when it is not null and `float(score)` succeeds: ints, floats, `true`/`false`
  (`float(True) == 1.0`) and numeric strings such as `"0.5"` or `"nan"` count, objects, lists and
  other strings are skipped (the reference's `extract_step_scores`);
* where the reference itself would crash (a line that is JSON but not an object, `steps_with_score`
  that is not a list of objects, a score too large for a float, bytes that are not UTF-8), the scan
  raises one `MPRMError` naming the file, line and field.

How it is fast: files are cut into 8 MiB shards that end at a newline, scanned on a
`concurrent.futures` process pool (largest first). A shard whose every line is a plain record is read
in one typed `msgspec` call that validates every value as JSON but builds Python objects only for the
scores; anything unusual goes line by line through `orjson`, and a line orjson rejects (NaN / Infinity
literals, lone surrogates, numbers out of range, Unicode whitespace around the record) or may have
widened (an integer beyond 64 bits) is parsed again with `json.loads`. All three give identical values
on every line they accept (tests check it). Memory holds one shard per process.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import multiprocessing
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from pathlib import Path

import msgspec
import numpy as np
import orjson
import pyarrow as pa

from mprm_hf.errors import MPRMError
from mprm_hf.selection.scores import rollout_statistics

SHARD_BYTES = 8 * 1024 * 1024
"""Bytes per scan shard: small enough to bound a worker's memory, large enough to amortise the pool."""

_WIDENED = float(2**63)  # orjson turns integer literals beyond 64 bits into floats at least this large
_INT_DIGITS = sys.get_int_max_str_digits() or 1 << 40  # `json.loads` rejects longer integer literals


class _ScoredStep(msgspec.Struct, gc=False):
    score: float | None = None


class _ScoredRecord(msgspec.Struct, gc=False):
    steps_with_score: list[_ScoredStep] | None = None


_decode_scores = msgspec.json.Decoder(_ScoredRecord).decode
_decode_lines = msgspec.json.Decoder(_ScoredRecord).decode_lines
"""The score-only decoders (a line; a whole shard): every other value is validated as JSON and skipped
without building Python objects (~4x orjson's speed on a rollout). They accept nothing `json.loads`
rejects except invalid UTF-8 (checked per shard) and integer literals over Python's digit limit
(longer lines take orjson; a plain shard is checked for digit runs); strings, booleans, NaN and
out-of-range numbers as scores raise, and the line takes the rule-by-rule path."""
_DECODE_ERRORS = (ValueError, RecursionError, msgspec.MsgspecError)  # the line(s) take the careful path
_score_of = attrgetter("score")
_NEWLINES = re.compile(rb"(\r\n|\r|\n)")
_BLANK = object()
_INVALID = object()

BLANK = "blank line"
NOT_JSON = "not JSON"
NO_NUMERIC_SCORE = "no numeric score"
SKIP_REASONS = (BLANK, NOT_JSON, NO_NUMERIC_SCORE)
EXAMPLES_PER_REASON = 3

SCORE_TABLE_SCHEMA = pa.schema(
    [
        ("file", pa.int32()),  # index into the sorted file list (the source)
        ("line", pa.int64()),  # 1-based line number, universal newlines
        ("offset", pa.int64()),  # byte offset of the line
        ("length", pa.int64()),  # byte length of the line without its terminator
        ("n_steps", pa.int32()),  # entries of steps_with_score
        ("n_scored", pa.int32()),  # steps with a numeric score
        ("n_pos", pa.int32()),  # of those, score > 0
        ("sum_pos", pa.float64()),  # built-in sum() of the positive scores, in step order
    ]
)
SCORE_TABLE_VERSION = 7


# --------------------------------------------------------------------------------------------- files
def annotation_files(annotations_dir: str | os.PathLike) -> list[Path]:
    """The reference's file list: `sorted(DIR.glob("*.jsonl"))` (hidden files included, as pathlib does)."""
    folder = Path(annotations_dir)
    if not folder.is_dir():
        raise MPRMError(f"{folder}: annotations folder not found")
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise MPRMError(f"{folder}: no *.jsonl annotation files")
    for path in files:
        if not path.is_file():
            raise MPRMError(f"{path}: not a regular file")
    return files


def _line_number(path: Path, offset: int) -> int:
    """1-based line number (universal newlines) of the line starting at `offset`; only for messages."""
    with path.open("rb") as handle:
        head = handle.read(offset)
    return len(_NEWLINES.findall(head)) + 1


def _where(path: Path, offset: int) -> str:
    return f"{path}:{_line_number(path, offset)}"


# --------------------------------------------------------------------------------------------- parse
def _loads(stripped: bytes, path: Path, offset: int, *, exact: bool = False) -> object:
    """Parse one ASCII-stripped line as `json.loads(line.decode().strip())` would, or tell blank/invalid."""
    if not exact:
        try:
            return orjson.loads(stripped)
        except orjson.JSONDecodeError:
            pass
    try:
        text = stripped.decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise MPRMError(
            f"{_where(path, offset)}: not valid UTF-8 ({error.reason} at byte {error.start})"
        ) from None
    if not text:
        return _BLANK
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return _INVALID
    except (ValueError, RecursionError) as error:  # e.g. an integer longer than Python's digit limit
        raise MPRMError(f"{_where(path, offset)}: cannot be parsed as JSON ({error})") from None


class _Widened(Exception):
    """A score orjson may have widened from a huge integer: re-parse the line with `json`."""


def _numeric(value: object, path: Path, offset: int, index: int) -> float | None:
    """`float(value)` if the reference counts it as a score, else None.

    Where the reference crashes (an integer too large for a float), stop with the located error."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
    except OverflowError:
        raise MPRMError(
            f"{_where(path, offset)}: field 'steps_with_score[{index}].score' is too large for a float"
        ) from None


def _step_scores(record: object, path: Path, offset: int, *, check_widened: bool) -> list[float]:
    """The reference's `extract_step_scores`, with its crashes turned into one-line errors."""
    if type(record) is not dict:
        raise MPRMError(
            f"{_where(path, offset)}: a record must be a JSON object, got {type(record).__name__}"
        )
    steps = record.get("steps_with_score") or []
    if type(steps) is not list:
        raise MPRMError(
            f"{_where(path, offset)}: field 'steps_with_score' must be a list, got {type(steps).__name__}"
        )
    scores: list[float] = []
    for index, step in enumerate(steps):
        if type(step) is not dict:
            raise MPRMError(
                f"{_where(path, offset)}: field 'steps_with_score[{index}]' must be an object, got {type(step).__name__}"
            )
        score = step.get("score")
        kind = type(score)
        if kind is float:
            if check_widened and not -_WIDENED < score < _WIDENED:
                raise _Widened
            scores.append(score)
        elif score is not None:  # ints (which may overflow a float), bools, strings: as float() reads them
            value = _numeric(score, path, offset, index)
            if value is not None:
                scores.append(value)
    return scores


def _record_and_scores(stripped: bytes, path: Path, offset: int) -> tuple[object, list[float] | None, bool]:
    """(record, numeric scores, parsed_by_json) of a line, or (_BLANK/_INVALID, None, True)."""
    record = _loads(stripped, path, offset)
    if record is _BLANK or record is _INVALID:
        return record, None, True
    try:
        return record, _step_scores(record, path, offset, check_widened=True), False
    except _Widened:
        record = _loads(stripped, path, offset, exact=True)
        return record, _step_scores(record, path, offset, check_widened=False), True


def _split_lines(buffer: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset in buffer, line without terminator) for Python's universal newlines."""
    if b"\r" not in buffer:
        position = 0
        for piece in buffer.split(b"\n"):
            yield position, piece
            position += len(piece) + 1
        return
    pieces = _NEWLINES.split(buffer)
    position = 0
    for index in range(0, len(pieces), 2):
        piece = pieces[index]
        yield position, piece
        position += len(piece) + (len(pieces[index + 1]) if index + 1 < len(pieces) else 0)


def column_numpy(table: pa.Table, name: str) -> np.ndarray:
    """A null-free numeric column as numpy, read straight from its buffers (`to_numpy()` would import
    pandas, +0.4 s; `combine_chunks()` would allocate through Arrow's pool, which keeps the memory)."""
    dtype = np.dtype(SCORE_TABLE_SCHEMA.field(name).type.to_pandas_dtype())
    parts = [
        np.frombuffer(chunk.buffers()[1], dtype=dtype)[chunk.offset : chunk.offset + len(chunk)]
        for chunk in table.column(name).chunks
        if len(chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _arrow(values: np.ndarray, kind: pa.DataType) -> pa.Array:
    """A zero-copy Arrow array of a numpy column (`pa.array(ndarray)` would import pandas: +0.4 s)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def _may_hold_long_digit_run(buffer: np.ndarray) -> bool:
    """Whether some run of ASCII digits may be longer than `_INT_DIGITS`. Such a run covers two
    neighbouring bytes sampled every `_INT_DIGITS // 2` and every byte between them: the samples find
    the few candidate stretches, and each is checked whole (sampled pairs of digits are common)."""
    step = _INT_DIGITS // 2
    sampled = (buffer[::step] - 48) < 10
    for index in np.flatnonzero(sampled[:-1] & sampled[1:]).tolist():
        if bool(((buffer[index * step : (index + 1) * step + 1] - 48) < 10).all()):
            return True
    return False


def _is_utf8(data: memoryview) -> bool:
    """Whether the bytes decode as UTF-8 (the reference reads each file as UTF-8 text and crashes if not)."""
    if not len(data) or int(np.frombuffer(data, dtype=np.uint8).max()) < 0x80:
        return True
    try:
        str(data, "utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- scan
@dataclass
class ShardScan:
    """What one shard contributes to the score table (lists while it is read line by line, numpy arrays
    when it is read whole), with its skipped lines by reason. Lines are numbered within the shard."""

    file: int
    start: int
    lines: list[int] | np.ndarray = field(default_factory=list)
    offsets: list[int] | np.ndarray = field(default_factory=list)
    lengths: list[int] | np.ndarray = field(default_factory=list)
    n_steps: list[int] | np.ndarray = field(default_factory=list)
    n_scored: list[int] | np.ndarray = field(default_factory=list)
    n_pos: list[int] | np.ndarray = field(default_factory=list)
    sum_pos: list[float] | np.ndarray = field(default_factory=list)
    n_lines: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[str, int]] = field(default_factory=list)  # (reason, line within the shard)

    def skip(self, reason: str, line: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if self.skipped[reason] <= EXAMPLES_PER_REASON:
            self.examples.append((reason, line))

    def add(self, line: int, offset: int, length: int, n_steps: int) -> None:
        self.lines.append(line)
        self.offsets.append(offset)
        self.lengths.append(length)
        self.n_steps.append(n_steps)

    def batch(self, first_line: int) -> pa.RecordBatch:
        columns = {
            "file": np.full(len(self.offsets), self.file, dtype=np.int32),
            "line": np.asarray(self.lines, dtype=np.int64) + first_line,
            "offset": np.asarray(self.offsets, dtype=np.int64),
            "length": np.asarray(self.lengths, dtype=np.int64),
            "n_steps": np.asarray(self.n_steps, dtype=np.int32),
            "n_scored": np.asarray(self.n_scored, dtype=np.int32),
            "n_pos": np.asarray(self.n_pos, dtype=np.int32),
            "sum_pos": np.asarray(self.sum_pos, dtype=np.float64),
        }
        return pa.RecordBatch.from_arrays(
            [_arrow(columns[item.name], item.type) for item in SCORE_TABLE_SCHEMA], schema=SCORE_TABLE_SCHEMA
        )


def _scan_careful(buffer: bytes, start: int, path: Path, out: ShardScan) -> list[list[float]]:
    """The rule-by-rule path over a whole shard: every line through `_record_and_scores`."""
    per_line: list[list[float]] = []
    pieces = list(_split_lines(buffer))
    out.n_lines = len(pieces) - (not pieces[-1][1]) if pieces else 0  # a final terminator ends no line
    for line, (position, piece) in enumerate(pieces[: out.n_lines]):
        stripped = piece.strip()
        if not stripped:
            out.skip(BLANK, line)
            continue
        record, scores, _ = _record_and_scores(stripped, path, start + position)
        if scores is None:
            out.skip(BLANK if record is _BLANK else NOT_JSON, line)
            continue
        if not scores:
            out.skip(NO_NUMERIC_SCORE, line)
            continue
        out.add(line, start + position, len(piece), len(record.get("steps_with_score") or ()))  # type: ignore[union-attr]
        per_line.append(scores)
    return per_line


def _scan_plain_shard(source: mmap.mmap, start: int, end: int, out: ShardScan) -> np.ndarray | None:
    """Scores of a whole shard in one `msgspec` call, when every line is plain: it starts with `{` and
    ends with `}` right at its newlines (so it is not blank, and as a string never holds a raw newline,
    each newline falls between two top-level values), none holds a digit run over Python's integer
    limit, the decoder reads exactly one record per line, and no score is null. Else None (nothing
    recorded), and the caller reads the shard line by line. The shard is bytes [start, end) of `source`."""
    data = memoryview(source)[start:end]
    buffer = np.frombuffer(data, dtype=np.uint8)
    positions: list[int] = []
    find = source.find  # memchr from line to line: faster than a numpy pass over every byte
    position = find(b"\n", start, end)
    while position != -1:
        positions.append(position - start)
        position = find(b"\n", position + 1, end)
    newlines = np.array(positions, dtype=np.int64)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.append(newlines, len(buffer))
    if len(buffer) and buffer[-1] == 10:  # nothing after the last newline
        starts, ends = starts[:-1], ends[:-1]
    if (ends <= starts).any() or (buffer[starts] != 123).any() or (buffer[ends - 1] != 125).any():
        return None
    if _may_hold_long_digit_run(buffer):
        return None
    try:
        records = _decode_lines(data)
    except _DECODE_ERRORS:
        return None
    if len(records) != len(starts):
        return None
    steps = [record.steps_with_score or () for record in records]
    flat = list(map(_score_of, chain.from_iterable(steps)))
    if None in flat:
        return None
    n_scored = np.fromiter(map(len, steps), dtype=np.int64, count=len(steps))
    ranked = n_scored > 0
    out.n_lines = len(starts)
    out.lines = np.flatnonzero(ranked)  # arrays: no Python int per line, and they pickle as buffers
    out.offsets = starts[ranked] + start
    out.lengths = (ends - starts)[ranked]
    out.n_steps = out.n_scored = n_scored[ranked]
    for line in np.flatnonzero(~ranked).tolist():
        out.skip(NO_NUMERIC_SCORE, line)
    return np.asarray(flat, dtype=np.float64)


def _scan_fast(path: Path, start: int, end: int, out: ShardScan) -> np.ndarray | None:
    """The common case: bytes [start, end) split on `\\n` only, every record read straight from a
    memory map (no copy of the shard). Returns the scores of all ranked lines, flattened (their counts
    go to `out.n_scored`), or None if the careful path must redo the shard (a `\\r` line ending, bytes
    that are not UTF-8, or a score orjson may have widened from a huge integer)."""
    with path.open("rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if mapped.find(b"\r", start, end) != -1:
        return None
    view = memoryview(mapped)
    if not _is_utf8(view[start:end]):
        return None
    values = _scan_plain_shard(mapped, start, end, out)
    if values is not None:
        view.release()
        return values
    loads, find, decode_scores = orjson.loads, mapped.find, _decode_scores
    flat: list[float] = []
    position, piece, line = start, None, 0
    while position < end:
        newline = find(b"\n", position, end)
        stop = end if newline == -1 else newline
        piece = view[position:stop]
        try:  # both parsers skip the JSON whitespace str.strip() would remove; anything unusual falls through
            if stop - position > _INT_DIGITS:
                steps = loads(piece)["steps_with_score"]
                scores = [float(step["score"]) for step in steps]
            else:
                steps = decode_scores(piece).steps_with_score or ()
                scores = [step.score for step in steps if step.score is not None]
            n_steps = len(steps)
        except (TypeError, ValueError, KeyError, OverflowError, RecursionError, msgspec.MsgspecError):
            stripped = bytes(piece).strip()
            scores = None
            if not stripped:
                out.skip(BLANK, line)
            else:
                record, scores, _ = _record_and_scores(stripped, path, position)
                if scores is None:
                    out.skip(BLANK if record is _BLANK else NOT_JSON, line)
                else:
                    n_steps = len(record.get("steps_with_score") or ())  # type: ignore[union-attr]
        if scores:
            out.add(line, position, stop - position, n_steps)
            out.n_scored.append(len(scores))
            flat += scores
        elif scores is not None:
            out.skip(NO_NUMERIC_SCORE, line)
        position = stop + 1
        line += 1
    out.n_lines = line
    del piece
    view.release()
    values = np.asarray(flat, dtype=np.float64)
    return None if (np.abs(values) >= _WIDENED).any() else values


def scan_shard(task: tuple[int, str, int, int]) -> ShardScan:
    """Score every line of bytes [start, end) of one file (a worker's unit of work).

    The fast path assumes well-formed records and sends any line that raises to the careful path, which
    follows the reference rule by rule. n_pos and sum_pos are then computed for all lines at once, in
    Python's own `sum()` order (`scores.python_sum_rows`)."""
    file_index, name, start, end = task
    path = Path(name)
    out = ShardScan(file_index, start)
    values = _scan_fast(path, start, end, out)
    if values is None:
        out = ShardScan(file_index, start)
        with path.open("rb") as handle:
            handle.seek(start)
            per_line = _scan_careful(handle.read(end - start), start, path, out)
        out.n_scored = [len(scores) for scores in per_line]
        values = np.asarray([score for scores in per_line for score in scores], dtype=np.float64)
    offsets = np.concatenate([[0], np.cumsum(out.n_scored, dtype=np.int64)])
    stats = rollout_statistics(offsets, values, np.ones(len(values), dtype=bool))
    out.n_pos = stats["n_pos"]
    out.sum_pos = stats["sum_pos"]
    return out


def shard_tasks(files: Sequence[Path], shard_bytes: int = SHARD_BYTES) -> list[tuple[int, str, int, int]]:
    """Cut each file into byte ranges that end right after a `\\n` (so `\\r\\n` never straddles two)."""
    tasks = []
    for file_index, path in enumerate(files):
        size = path.stat().st_size
        start = 0
        with path.open("rb") as handle:
            while start < size:
                end = min(start + shard_bytes, size)
                if end < size:
                    handle.seek(end)
                    end += len(handle.readline())
                tasks.append((file_index, str(path), start, end))
                start = end
    return tasks


def _run_tasks(
    tasks: list[tuple[int, str, int, int]], num_proc: int | None, progress: bool
) -> list[ShardScan]:
    """`scan_shard` over every task, on a fork pool when there is more than one process' worth of work,
    the largest shards first; results in task order."""
    processes = max(1, min(num_proc or os.cpu_count() or 1, len(tasks)))
    order = sorted(range(len(tasks)), key=lambda index: tasks[index][2] - tasks[index][3])
    results: list[ShardScan | None] = [None] * len(tasks)
    with _progress_bar(progress, total=sum(t[3] - t[2] for t in tasks), unit="B", unit_scale=True,
                       desc="Scoring rollouts") as bar:  # fmt: skip
        if processes == 1:
            scans = map(scan_shard, (tasks[index] for index in order))
            executor = None
        else:
            executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"))
            scans = executor.map(scan_shard, [tasks[index] for index in order])
        try:
            for index, scan in zip(order, scans, strict=True):
                results[index] = scan
                bar.update(tasks[index][3] - tasks[index][2])
        finally:
            if executor is not None:
                executor.shutdown(cancel_futures=True)
    return results  # type: ignore[return-value]


class _NoBar:
    """What a progress bar is asked to do when there is none to show."""

    def update(self, _: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


def _progress_bar(enabled: bool, **options: object):  # noqa: ANN202 - a tqdm bar or a stand-in
    """A tqdm bar, or (`--quiet`) a stand-in, without importing tqdm, which costs ~0.1 s of start-up."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(**options)


# --------------------------------------------------------------------------------------------- table
@dataclass
class ScanCounts:
    """One file's lines: ranked, and skipped by reason with the first few line numbers of each."""

    ranked: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[str, int]] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


@dataclass
class ScoreTable:
    """The scan of one corpus: the sorted annotation files, one table row per ranked rollout (in file
    then line order), and what every file's lines were."""

    files: list[Path]
    table: pa.Table = field(repr=False)
    counts: list[ScanCounts]
    cached: bool = False
    path: Path | None = None  # the cache file, when cached

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def sources(self) -> list[str]:
        return [path.stem for path in self.files]

    def column(self, name: str) -> np.ndarray:
        return column_numpy(self.table, name)

    def file_bounds(self) -> list[int]:
        """Row `bounds[i]` to `bounds[i + 1]` belong to file i."""
        return np.searchsorted(self.column("file"), np.arange(len(self.files) + 1)).tolist()

    def skipped_lines(self) -> list[str]:
        """One line per reason, with its count and first locations, e.g. 'not JSON: 2 (a.jsonl:3, ...)'."""
        totals: dict[str, int] = {}
        where: dict[str, list[str]] = {}
        for path, counts in zip(self.files, self.counts, strict=True):
            for reason, count in counts.skipped.items():
                totals[reason] = totals.get(reason, 0) + count
            for reason, line in counts.examples:
                where.setdefault(reason, []).append(f"{path.name}:{line}")
        return [
            f"{reason}: {totals[reason]} ({', '.join(where.get(reason, [])[:EXAMPLES_PER_REASON])}"
            f"{', ...' if totals[reason] > EXAMPLES_PER_REASON else ''})"
            for reason in SKIP_REASONS
            if totals.get(reason)
        ]

    def dataset(self):  # noqa: ANN201 - a datasets.Dataset; datasets is imported only here
        """The table as a `datasets.Dataset` (memory-mapped from the cache file when there is one)."""
        import datasets

        if self.path is not None:
            return datasets.Dataset.from_file(str(self.path))
        return datasets.Dataset(self.table)


def _assemble(files: Sequence[Path], scans: list[ShardScan]) -> tuple[list[pa.RecordBatch], list[ScanCounts]]:
    """Number every shard's lines within its file and gather the per-file counts."""
    counts = [ScanCounts() for _ in files]
    lines_before = [0] * len(files)
    batches = []
    for scan in scans:
        first = lines_before[scan.file] + 1
        batches.append(scan.batch(first))
        file_counts = counts[scan.file]
        file_counts.ranked += len(scan.offsets)
        for reason, count in scan.skipped.items():
            file_counts.skipped[reason] = file_counts.skipped.get(reason, 0) + count
        file_counts.examples += [(reason, line + first) for reason, line in scan.examples]
        lines_before[scan.file] += scan.n_lines
    for file_counts in counts:
        kept: dict[str, int] = {}
        examples = []
        for reason, line in file_counts.examples:
            kept[reason] = kept.get(reason, 0) + 1
            if kept[reason] <= EXAMPLES_PER_REASON:
                examples.append((reason, line))
        file_counts.examples = examples
    return batches, counts


# --------------------------------------------------------------------------------------------- cache
def _fingerprint(files: Sequence[Path]) -> str:
    """Cache key: every file's path, size and mtime, the table's layout and the interpreter's sum()."""
    stats = [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    key = json.dumps(
        {"files": stats, "layout": SCORE_TABLE_VERSION, "compensated_sum": sys.version_info >= (3, 12)}
    )
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    """The `datasets` cache (HF_DATASETS_CACHE), computed without importing `datasets` (~90 MB RSS)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]) / "mprm_hf_scores"
    hf_home = (
        os.environ.get("HF_HOME")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    )
    return Path(hf_home) / "datasets" / "mprm_hf_scores"


def _corpus_folder(annotations_dir: Path, cache_dir: str | os.PathLike | None) -> Path:
    """One cache folder per corpus folder, so that storing its new table can prune its stale ones."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / hashlib.sha256(str(annotations_dir.resolve()).encode()).hexdigest()[:16]


def _read_cached(path: Path, files: list[Path]) -> ScoreTable | None:
    try:
        table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
        meta = json.loads(table.schema.metadata[b"mprm_hf.counts"])
    except (OSError, pa.ArrowInvalid, KeyError, TypeError, ValueError):
        return None  # unreadable (e.g. written by another version): scan again
    counts = [
        ScanCounts(entry["ranked"], entry["skipped"], [tuple(pair) for pair in entry["examples"]])
        for entry in meta
    ]
    return ScoreTable(files, table.replace_schema_metadata(None), counts, cached=True, path=path)


def _store(folder: Path, key: str, batches: list[pa.RecordBatch], counts: list[ScanCounts]) -> Path:
    """Write the table atomically (a unique temporary beside it, then a rename) and prune the corpus's
    stale tables."""
    folder.mkdir(parents=True, exist_ok=True)
    schema = SCORE_TABLE_SCHEMA.with_metadata(
        {"mprm_hf.counts": json.dumps([vars(count) for count in counts])}
    )
    target = folder / f"{key}.arrow"
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
    try:
        os.close(descriptor)
        with pa.OSFile(temporary, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    for stale in folder.glob("*.arrow"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def scan_corpus(
    annotations_dir: str | os.PathLike,
    *,
    num_proc: int | None = None,
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    shard_bytes: int = SHARD_BYTES,
) -> ScoreTable:
    """The score table of the `*.jsonl` files in `annotations_dir`: from the cache when the files are
    unchanged, else scanned (on `num_proc` processes, default all cores) and cached."""
    folder = Path(annotations_dir)
    files = annotation_files(folder)
    key = _fingerprint(files)
    cache = _corpus_folder(folder, cache_dir) if use_cache else None
    if cache is not None and (cache / f"{key}.arrow").exists():
        cached = _read_cached(cache / f"{key}.arrow", files)
        if cached is not None:
            return cached
    scans = _run_tasks(shard_tasks(files, shard_bytes), num_proc, progress)
    batches, counts = _assemble(files, scans)
    if cache is None:
        table = pa.Table.from_batches(batches, schema=SCORE_TABLE_SCHEMA)
        return ScoreTable(files, table, counts)
    path = _store(cache, key, batches, counts)
    stored = _read_cached(path, files)
    assert stored is not None
    stored.cached = False
    return stored
