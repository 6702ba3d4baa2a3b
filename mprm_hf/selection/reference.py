"""The reference BIS subset (`build_bis_subset.py`, SPEC 3), byte for byte, and fast.

The reference reads every annotation file whole, `json.loads` every line, scores it in Python, sorts,
and converts the kept rollouts. This module gives the same bytes with three changes that do not touch
the result:

* **Scan once, rank many times.** A scan keeps, per ranked line, only its byte span and the three
  numbers BIS needs (`n_scored`, `n_pos`, `sum_pos`). That table is cached as an Arrow file in the
  `datasets` cache (keyed by the files' paths, sizes and mtimes), so a new alpha or ratio never reads
  the corpus again: only its kept lines are re-read (by byte offset) and converted. With
  `cache_records` (for sweeps) the scan also converts every ranked line and caches its PRM line
  bytes, so a new alpha or ratio is a numpy top-k plus byte copies.
* **msgspec first, then orjson, then `json`.** A shard whose every line is a plain record is read in
  one typed `msgspec` call that validates every value as JSON but builds Python objects only for what
  is needed (the scores; with `cache_records`, or when converting kept lines, also the image,
  question and step texts). Anything unusual goes line by line through `orjson`; a line orjson
  rejects (NaN / Infinity literals, lone surrogates, numbers out of range, Unicode whitespace around
  the record) is parsed again with `json.loads`, and a value orjson may have widened (an integer
  beyond 64 bits becomes a float there) sends the line to `json.loads` too. All three give identical
  values on every line they accept.
* **Both cores, one pass.** Files are cut into newline-aligned shards, memory-mapped and scanned by
  this process and a fork pool; memory holds one shard per process, whatever the corpus size. A cold
  run scans, ranks and converts file by file, one file per process (as the reference goes file by
  file), when whole files balance the processes; else it scans by shards and converts afterwards.

Rules copied from the reference, all of them load-bearing for byte equality:

* files: `sorted(DIR.glob("*.jsonl"))`; lines split with Python's universal newlines (`\\n`, `\\r\\n`,
  lone `\\r`), stripped with `str.strip()`; blank lines and lines `json.loads` rejects are not ranked;
* a score is *numeric* when it is not null and `float(score)` succeeds: ints, floats, `true`/`false`
  (`float(True) == 1.0`) and numeric strings such as `"0.5"` or `"nan"` count, objects, lists and
  other strings are skipped (the reference's `extract_step_scores`);
* `p_pos = n_pos / n`, `R = sum(positive scores) / n_pos` with Python's built-in `sum` (left to right
  on Python <= 3.11, Neumaier-compensated from 3.12, exactly as the reference behaves on the same
  interpreter), `R = 1.0` without positives; `BIS = (p_pos * (1 - p_pos) + alpha) * R`;
* a stable descending sort (ties keep file order; a NaN BIS, possible only with infinite scores,
  falls back to Python's own `list.sort` so even NaN orders the same); `top_k = max(1, int(m * r))`;
* kept rollouts are converted in file order; a rollout with an empty image, no steps, or a step with
  empty text or a non-numeric score is dropped, not replaced; the question is `question_orig`, else
  `question`, else `""`, passed through `str()` and stripped;
* records written as `json.dumps(record, ensure_ascii=False)` would write them.

Where the reference itself would crash (a line that is JSON but not an object, `steps_with_score`
that is not a list of objects, a step text that is not a string, a score too large for a float,
bytes that are not UTF-8), this module raises one `MPRMError` naming the file, line and field.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import mmap
import multiprocessing
import multiprocessing.connection
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain
from json.encoder import encode_basestring  # the exact string encoder json.dumps(ensure_ascii=False) uses
from operator import attrgetter
from pathlib import Path
from typing import BinaryIO

import msgspec
import numpy as np
import orjson
import pyarrow as pa

from mprm_hf.errors import MPRMError

SHARD_BYTES = 8 * 1024 * 1024
"""Bytes per scan shard: small enough to bound a worker's memory, large enough to amortise the pool."""
CONVERT_ROWS = 250
"""Kept lines converted per task: one typed msgspec call, a small part file, little memory."""

_WIDENED = float(2**63)  # orjson turns integer literals beyond 64 bits into floats at least this large
_INT_DIGITS = sys.get_int_max_str_digits() or 1 << 40  # `json.loads` rejects longer integer literals


class _ScoredStep(msgspec.Struct, gc=False):
    score: float | None = None


class _ScoredRecord(msgspec.Struct, gc=False):
    steps_with_score: list[_ScoredStep] | None = None


class _PRMStep(msgspec.Struct, gc=False):
    step: str | None = None
    score: float | None = None


class _PRMRecord(msgspec.Struct, gc=False):
    image: str | list[str] = ""
    question_orig: str | None = None
    question: str | None = None
    steps_with_score: list[_PRMStep] | None = None


_decode_scores = msgspec.json.Decoder(_ScoredRecord).decode
_decode_lines = msgspec.json.Decoder(_ScoredRecord).decode_lines
"""The score-only decoders (a line; a whole shard): every other value is validated as JSON and skipped
without building Python objects (~4x orjson's speed on a rollout). They accept nothing `json.loads`
rejects except invalid UTF-8 (checked per shard) and integer literals over Python's digit limit
(longer lines take orjson; a plain shard is checked for digit runs); strings, booleans, NaN and
out-of-range numbers as scores raise, and the line takes the rule-by-rule path."""
_decode_prm_lines = msgspec.json.Decoder(_PRMRecord).decode_lines
"""The same, reading also what a PRM line needs (image, question, step texts), for the common shape
only: any other type raises, and the lines go through orjson and the rule-by-rule path."""
_DECODE_ERRORS = (ValueError, RecursionError, msgspec.MsgspecError)  # the line(s) take the careful path
_score_of = attrgetter("score")
_NEWLINES = re.compile(rb"(\r\n|\r|\n)")
_BLANK = object()
_INVALID = object()

SCORE_TABLE_SCHEMA = pa.schema(
    [
        ("file", pa.int32()),  # index into the sorted file list
        ("offset", pa.int64()),  # byte offset of the line (its order in the file)
        ("length", pa.int64()),  # byte length of the line without its terminator
        ("n_scored", pa.int32()),  # steps with a numeric score
        ("n_pos", pa.int32()),  # of those, score > 0
        ("sum_pos", pa.float64()),  # built-in sum() of the positive scores, in step order
    ]
)
RECORDS_SCHEMA = pa.schema(
    [
        ("record", pa.large_string()),  # the reference's PRM line + "\n" of a ranked rollout; null if dropped
        ("error", pa.large_string()),  # why the reference would crash on this rollout if it kept it
    ]
)
SCORE_TABLE_VERSION = 6


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


# ---------------------------------------------------------------------------------------------- scan
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


@dataclass
class ShardScan:
    """What one shard contributes to the score table, plus counts for the report (columns are lists
    while a shard is read line by line, numpy arrays when it is read whole)."""

    file: int
    offsets: list[int] | np.ndarray = field(default_factory=list)
    lengths: list[int] | np.ndarray = field(default_factory=list)
    n_scored: list[int] | np.ndarray = field(default_factory=list)
    n_pos: list[int] | np.ndarray = field(default_factory=list)
    sum_pos: list[float] | np.ndarray = field(default_factory=list)
    records: list[bytes] | None = None  # with a records cache: each ranked line's PRM line (b"": dropped)
    errors: list[bytes] | None = None  # ... or why the reference would crash if it kept it (b"": fine)
    blank: int = 0
    invalid_json: int = 0
    no_numeric_score: int = 0

    def add_record(self, convert: Callable[..., bytes | None], *args: object) -> None:
        """Convert a ranked line now (records cache); a crash-worthy line is remembered, not raised."""
        if self.records is None or self.errors is None:
            return
        try:
            self.records.append(convert(*args) or b"")
            self.errors.append(b"")
        except MPRMError as error:
            self.records.append(b"")
            self.errors.append(str(error).encode("utf-8"))

    def batch(self) -> pa.RecordBatch:
        columns = {
            "file": np.full(len(self.offsets), self.file, dtype=np.int32),
            "offset": np.asarray(self.offsets, dtype=np.int64),
            "length": np.asarray(self.lengths, dtype=np.int64),
            "n_scored": np.asarray(self.n_scored, dtype=np.int32),
            "n_pos": np.asarray(self.n_pos, dtype=np.int32),
            "sum_pos": np.asarray(self.sum_pos, dtype=np.float64),
        }
        return pa.RecordBatch.from_arrays(
            [_arrow(columns[item.name], item.type) for item in SCORE_TABLE_SCHEMA], schema=SCORE_TABLE_SCHEMA
        )


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


def _strings(values: Sequence[bytes]) -> pa.Array:
    """An Arrow large_string array of UTF-8 values, b"" meaning null, built from its buffers in three C
    passes (`pa.array(list)` would import pandas: +0.4 s); 64-bit offsets, so no shard can overflow."""
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    valid = lengths > 0
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    data = pa.py_buffer(b"".join(values))
    return pa.Array.from_buffers(
        pa.large_string(), len(values), [bitmap, pa.py_buffer(offsets), data], int((~valid).sum())
    )


def _arrow(values: np.ndarray, kind: pa.DataType) -> pa.Array:
    """A zero-copy Arrow array of a numpy column (`pa.array(ndarray)` would import pandas: +0.4 s)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def _scan_careful(buffer: bytes, start: int, path: Path, out: ShardScan) -> list[list[float]]:
    """The rule-by-rule path over a whole shard: every line through `_record_and_scores`."""
    per_line: list[list[float]] = []
    for position, piece in _split_lines(buffer):
        stripped = piece.strip()
        if not stripped:
            out.blank += bool(piece)
            continue
        record, scores, _ = _record_and_scores(stripped, path, start + position)
        if scores is None:
            if record is _BLANK:
                out.blank += 1
            else:
                out.invalid_json += 1
            continue
        if not scores:
            out.no_numeric_score += 1
            continue
        out.offsets.append(start + position)
        out.lengths.append(len(piece))
        per_line.append(scores)
        out.add_record(convert_line, piece, path, start + position)
    return per_line


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


def _scan_plain_shard(
    source: bytes | mmap.mmap, start: int, end: int, out: ShardScan, path: Path | None = None
) -> np.ndarray | None:
    """Scores of a whole shard in one `msgspec` call, when every line is plain: it starts with `{` and
    ends with `}` right at its newlines (so it is not blank, and as a string never holds a raw newline,
    each newline falls between two top-level values), none holds a digit run over Python's integer
    limit, the decoder reads exactly one record per line, and no score is null. Else None (nothing
    recorded), and the caller reads the shard line by line. With a records cache (`out.records`) the
    decoder also reads what a PRM line needs, and every ranked line is converted from it (`path`
    locates the ones the careful path must redo). The shard is bytes [start, end) of `source`."""
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
    converting = out.records is not None
    try:
        records = (_decode_prm_lines if converting else _decode_lines)(data)
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
    out.offsets = starts[ranked] + start  # arrays: no Python int per line, and they pickle as buffers
    out.lengths = (ends - starts)[ranked]
    out.n_scored = n_scored[ranked]
    out.no_numeric_score += int((~ranked).sum())
    if converting:
        for index, offset, length in zip(
            np.flatnonzero(ranked).tolist(), out.offsets.tolist(), out.lengths.tolist(), strict=True
        ):
            local = offset - start
            out.add_record(_convert_typed, records[index], data[local : local + length], path, offset)
    return np.asarray(flat, dtype=np.float64)


def _is_utf8(data: memoryview) -> bool:
    """Whether the bytes decode as UTF-8 (the reference reads each file as UTF-8 text and crashes if not)."""
    if not len(data) or int(np.frombuffer(data, dtype=np.uint8).max()) < 0x80:
        return True
    try:
        str(data, "utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _scan_fast(path: Path, start: int, end: int, out: ShardScan) -> np.ndarray | None:
    """The common case: bytes [start, end) split on `\\n` only, every record read by orjson straight
    from a memory map (no copy of the shard). Returns the scores of all ranked lines, flattened (their
    counts go to `out.n_scored`), or None if the careful path must redo the shard (a `\\r` line
    ending, bytes that are not UTF-8, or a score orjson may have widened from a huge integer)."""
    with path.open("rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if mapped.find(b"\r", start, end) != -1:
        return None
    view = memoryview(mapped)
    loads, find, decode_scores = orjson.loads, mapped.find, _decode_scores
    converting = out.records is not None
    if not _is_utf8(view[start:end]):
        return None
    values = _scan_plain_shard(mapped, start, end, out, path)
    if values is not None:
        view.release()
        return values
    flat: list[float] = []
    position, piece = start, None
    while position < end:
        newline = find(b"\n", position, end)
        stop = end if newline == -1 else newline
        piece = view[position:stop]
        try:  # both parsers skip the JSON whitespace str.strip() would remove; anything unusual falls through
            if converting or stop - position > _INT_DIGITS:
                record = loads(piece)
                scores = [float(step["score"]) for step in record["steps_with_score"]]
                common = True  # one score per step, in step order: the converter reuses them as labels
            else:  # scores only: the kept lines are parsed again when they are converted
                steps = decode_scores(piece).steps_with_score or ()
                scores = [step.score for step in steps if step.score is not None]
                record, common = None, False
        except (TypeError, ValueError, KeyError, OverflowError, RecursionError, msgspec.MsgspecError):
            common = False
            record = None
            stripped = bytes(piece).strip()
            scores = None
            if not stripped:
                out.blank += bool(len(piece))
            else:
                record, scores, _ = _record_and_scores(stripped, path, position)
                if scores is None:
                    out.blank += record is _BLANK
                    out.invalid_json += record is not _BLANK
        if scores:
            out.offsets.append(position)
            out.lengths.append(stop - position)
            out.n_scored.append(len(scores))
            flat += scores
            if converting:
                out.add_record(_convert_parsed, record, piece, path, position, scores if common else None)
        elif scores is not None:
            out.no_numeric_score += 1
        position = stop + 1
    del piece
    view.release()
    values = np.asarray(flat, dtype=np.float64)
    return None if (np.abs(values) >= _WIDENED).any() else values


def scan_shard(task: tuple[int, str, int, int, str | None]) -> ShardScan:
    """Score every line of bytes [start, end) of one file (a worker's unit of work).

    The fast path assumes well-formed records (an object whose `steps_with_score` is a list of objects
    with a float-convertible `score`) and sends any line that raises to the careful path, which
    follows the reference rule by rule. n_pos and sum_pos are then computed for all lines at once,
    with Python's own `sum()` order (`scores.python_sum_rows`). With a records path, every ranked
    line is converted too and written there (by the worker, so the lines never cross a pipe)."""
    from mprm_hf.selection.scores import rollout_statistics

    file_index, name, start, end, records_path = task
    path = Path(name)

    def fresh() -> ShardScan:
        converting = records_path is not None
        return ShardScan(file_index, records=[] if converting else None, errors=[] if converting else None)

    out = fresh()
    values = _scan_fast(path, start, end, out)
    if values is None:
        out = fresh()
        with path.open("rb") as handle:
            handle.seek(start)
            per_line = _scan_careful(handle.read(end - start), start, path, out)
        out.n_scored = [len(scores) for scores in per_line]
        values = np.asarray([score for scores in per_line for score in scores], dtype=np.float64)
    offsets = np.concatenate([[0], np.cumsum(out.n_scored, dtype=np.int64)])
    stats = rollout_statistics(offsets, values, np.ones(len(values), dtype=bool))
    out.n_pos = stats["n_pos"]
    out.sum_pos = stats["sum_pos"]
    if records_path is not None:
        batch = pa.RecordBatch.from_arrays(
            [_strings(out.records), _strings(out.errors)], schema=RECORDS_SCHEMA
        )
        with pa.OSFile(records_path, "wb") as sink, pa.ipc.new_stream(sink, RECORDS_SCHEMA) as writer:
            writer.write_batch(batch)
        out.records = out.errors = None
    return out


def shard_tasks(
    files: Sequence[Path], shard_bytes: int = SHARD_BYTES
) -> list[tuple[int, str, int, int, None]]:
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
                tasks.append((file_index, str(path), start, end, None))
                start = end
    return tasks


@dataclass
class ScanCounts:
    """Per-file line counts of a scan: what the reference silently skips, made visible."""

    ranked: int = 0
    blank: int = 0
    invalid_json: int = 0
    no_numeric_score: int = 0

    def add(self, scan: ShardScan) -> None:
        self.ranked += len(scan.offsets)
        self.blank += scan.blank
        self.invalid_json += scan.invalid_json
        self.no_numeric_score += scan.no_numeric_score


_shared: tuple | None = None
"""In a pool worker: (the next-task counter, the results pipe's sending end, its lock), inherited."""


def _init_worker(counter: object, sender: object, lock: object) -> None:
    global _shared
    _shared = (counter, sender, lock)


def _claim(counter, n_tasks: int) -> int | None:  # noqa: ANN001 - a multiprocessing Value
    """The next unclaimed task of the current `imap`, or None when all are taken."""
    with counter.get_lock():
        index = counter.value
        if index >= n_tasks:
            return None
        counter.value = index + 1
        return index


def _run(function: Callable[[object], object], task: object) -> tuple[object, Exception | None]:
    """(result, None) or (None, error): an error is raised by the caller when its task's turn comes, so
    the first error in task (file) order is the one reported, as a one-process run would report it."""
    try:
        return function(task), None
    except Exception as error:  # noqa: BLE001 - re-raised in task order
        return None, error


def _drain(function: Callable[[object], object], tasks: list, generation: int) -> None:
    """In a pool worker: claim and run tasks until none is left, sending each result as it is done."""
    counter, sender, lock = _shared  # type: ignore[misc]
    while (index := _claim(counter, len(tasks))) is not None:
        message = (generation, index, *_run(function, tasks[index]))
        with lock:
            sender.send(message)


def _forward(receiver: multiprocessing.connection.Connection, received: queue.SimpleQueue) -> None:
    """In a thread of the calling process: move the workers' results off the pipe as they arrive, so a
    worker never waits on a full pipe while this process runs a task of its own (None: stop)."""
    while (message := receiver.recv()) is not None:
        received.put(message)


class Workers:
    """`num_proc` processes for an ordered `imap`: this one and a fork pool of `num_proc - 1`, or plain
    `map` when one process is enough.

    Every process, this one included, claims the next task from a shared counter whenever it is free,
    so no process waits while another still has tasks queued (a queue of whole files left one process
    idle for the last ~0.5 s of a cold run), and this process, which also writes what comes back, takes
    as much of the work as it has time for. Results come back in task order. Made once by
    `build_reference_subset` and shared by the scan and the conversion; the pool is forked on the first
    `imap` that needs it (a run served from the records cache forks nothing), and a scan forks before
    the score table and BIS arrays exist."""

    def __init__(self, num_proc: int | None, n_tasks: int | None = None) -> None:
        self.count = max(1, min(num_proc or os.cpu_count() or 1, n_tasks or 1 << 30))
        self.pool = None
        self.unfreeze = False
        self.generation = 0

    def imap(self, function, tasks):  # noqa: ANN001, ANN201 - mirrors Pool.imap
        if self.count < 2 or len(tasks) < 2:
            return map(function, tasks)
        if self.pool is None:
            context = multiprocessing.get_context("fork")
            self.counter = context.Value("q", 0)
            receiver, self.sender = context.Pipe(duplex=False)
            self.lock = context.Lock()
            # Frozen, the inherited objects are left alone by the workers' collections, and their pages
            # stay shared (a caller's own frozen objects stay frozen after close()).
            self.unfreeze = gc.get_freeze_count() == 0
            gc.freeze()
            self.pool = context.Pool(self.count - 1, _init_worker, (self.counter, self.sender, self.lock))
            self.received: queue.SimpleQueue = queue.SimpleQueue()
            self.forwarder = threading.Thread(target=_forward, args=(receiver, self.received), daemon=True)
            self.forwarder.start()  # after the fork: a forked child gets no copy of a running thread
        return self._claiming_imap(function, tasks)

    def _claiming_imap(self, function, tasks):  # noqa: ANN001, ANN202
        self.generation += 1
        self.counter.value = 0
        drains = [
            self.pool.apply_async(_drain, (function, tasks, self.generation)) for _ in range(self.count - 1)
        ]
        done: dict[int, tuple[object, Exception | None]] = {}
        try:
            for index in range(len(tasks)):
                while index not in done:
                    self._collect(done, drains, wait=False)
                    if index in done:
                        break
                    mine = _claim(self.counter, len(tasks))
                    if mine is not None:
                        done[mine] = _run(function, tasks[mine])
                    else:
                        self._collect(done, drains, wait=True)
                value, error = done.pop(index)
                if error is not None:
                    raise error
                yield value
        finally:  # also when the caller stops early: no task left running (a stale result is ignored)
            with self.counter.get_lock():
                self.counter.value = len(tasks)
            for drain in drains:
                drain.wait()
        for drain in drains:
            drain.get()  # a worker's own failure (a result that cannot be pickled) is raised here

    def _collect(self, done: dict, drains: list, *, wait: bool) -> None:
        """Move the results of this `imap` that the workers sent into `done`; with `wait`, wait for one,
        raising a worker's own failure instead of waiting forever."""
        while True:
            try:
                generation, index, value, error = (
                    self.received.get(timeout=0.05) if wait else self.received.get_nowait()
                )
            except queue.Empty:
                if not wait:
                    return
                for drain in drains:
                    if drain.ready():
                        drain.get()
                continue
            if generation == self.generation:
                done[index] = (value, error)
                wait = False

    def close(self) -> None:
        if self.pool is not None:
            with self.lock:
                self.sender.send(None)
            self.forwarder.join()
            self.pool.terminate()
            self.pool = None
            if self.unfreeze:
                gc.unfreeze()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _NoBar:
    """What a progress bar is asked to do when there is none to show."""

    def update(self, _: int) -> None:
        pass


def _progress_bar(enabled: bool, **options: object) -> contextlib.AbstractContextManager:
    """A tqdm bar, or (`--quiet`) a stand-in, without importing tqdm, which costs ~0.1 s of start-up."""
    if not enabled:
        return contextlib.nullcontext(_NoBar())
    from tqdm.auto import tqdm

    return tqdm(**options)


def scan_files(
    files: Sequence[Path],
    scores_path: Path,
    *,
    num_proc: int | None = None,
    progress: bool = True,
    shard_bytes: int = SHARD_BYTES,
    records_dir: Path | None = None,
    workers: Workers | None = None,
) -> list[ScanCounts]:
    """Scan all files (shards on a process pool) into the Arrow score table at `scores_path`.

    Shards stream into the file as they finish, in order, so memory holds one shard per worker.
    With `records_dir`, every ranked line's PRM line goes to `records_dir/<shard>.arrow` as well."""
    tasks = shard_tasks(files, shard_bytes)
    if records_dir is not None:
        records_dir.mkdir(parents=True, exist_ok=True)
        tasks = [(*task[:4], str(records_dir / f"{index:06d}.arrow")) for index, task in enumerate(tasks)]
    counts = [ScanCounts() for _ in files]
    total = sum(task[3] - task[2] for task in tasks)
    own = workers is None
    workers = workers or Workers(num_proc, len(tasks))
    try:
        with (
            _progress_bar(progress, total=total, unit="B", unit_scale=True, desc="Scoring rollouts") as bar,
            pa.OSFile(str(scores_path), "wb") as sink,
            pa.ipc.new_stream(sink, SCORE_TABLE_SCHEMA) as writer,
        ):
            for task, result in zip(tasks, workers.imap(scan_shard, tasks), strict=True):
                writer.write_batch(result.batch())
                counts[result.file].add(result)
                bar.update(task[3] - task[2])
    finally:
        if own:
            workers.close()
    return counts


def read_score_table(scores_path: Path) -> pa.Table:
    """The compact per-rollout score table (~36 bytes a rollout), memory-mapped (no copy)."""
    return pa.ipc.open_stream(pa.memory_map(str(scores_path))).read_all()


# -------------------------------------------------------------------------------------------- ranking
def reference_bis(n_scored: np.ndarray, n_pos: np.ndarray, sum_pos: np.ndarray, alpha: float) -> np.ndarray:
    """BIS exactly as the reference's Python floats give it: same operations, same order, IEEE doubles
    (computed in place, to keep the temporaries to two arrays).

    p_pos = n_pos / n;  R = sum_pos / n_pos (1.0 when n_pos == 0);  BIS = (p_pos * (1 - p_pos) + alpha) * R
    """
    has_positive = n_pos > 0
    divisor = n_pos.astype(np.float64)
    divisor[~has_positive] = 1.0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        reliability = np.divide(sum_pos, divisor, out=divisor)  # reuses the divisor's memory
        reliability[~has_positive] = 1.0
        bis = n_pos.astype(np.float64)
        bis /= n_scored  # p_pos
        bis *= 1.0 - bis  # p_pos * (1 - p_pos): the right side is evaluated first, as in Python
        bis += float(alpha)
        bis *= reliability
    return bis


def reference_top_k(m: int, top_ratio: float) -> int:
    """The reference's budget, `max(1, int(m * r))`, in Python arithmetic on purpose."""
    return max(1, int(m * top_ratio))


def rank_descending(bis: np.ndarray) -> np.ndarray:
    """Positions by BIS descending, ties in file order: what `list.sort(key=..., reverse=True)` gives."""
    if np.isnan(bis).any():  # NaN compares false both ways: only Python's own sort reproduces Python's order
        values = bis.tolist()
        return np.asarray(sorted(range(len(values)), key=values.__getitem__, reverse=True), dtype=np.int64)
    return np.argsort(-bis, kind="stable")


def top_k_positions(bis: np.ndarray, top_k: int) -> np.ndarray:
    """The first `top_k` of `rank_descending(bis)`, in file order, without sorting everything: every
    value above the k-th largest, then the ties at it in file order (exactly the stable sort's prefix)."""
    if top_k >= len(bis):
        return np.arange(len(bis), dtype=np.int64)
    if np.isnan(bis).any():
        return np.sort(rank_descending(bis)[:top_k])
    kth = np.partition(bis, len(bis) - top_k)[len(bis) - top_k]
    above = np.flatnonzero(bis > kth)
    ties = np.flatnonzero(bis == kth)[: top_k - len(above)]
    return np.sort(np.concatenate([above, ties]))


def kept_positions(bis: np.ndarray, top_ratio: float) -> np.ndarray:
    """Positions the reference keeps among one file's ranked rollouts (its BIS), in file order."""
    if not len(bis):
        return np.zeros(0, dtype=np.int64)
    return top_k_positions(bis, reference_top_k(len(bis), top_ratio))


def table_bis(table: pa.Table, alpha: float) -> np.ndarray:
    """BIS of every row of a score table."""
    return reference_bis(
        column_numpy(table, "n_scored"), column_numpy(table, "n_pos"), column_numpy(table, "sum_pos"), alpha
    )


def select_reference_rows(
    table: pa.Table, n_files: int, alpha: float, top_ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """(row numbers of the kept rollouts in file then line order, BIS of every row of the table)."""
    bis = table_bis(table, alpha)
    bounds = np.searchsorted(column_numpy(table, "file"), np.arange(n_files + 1)).tolist()
    kept = [
        kept_positions(bis[start:end], top_ratio) + start
        for start, end in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return (np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)), bis


# ------------------------------------------------------------------------------------------- convert
def _is_text(value: object) -> bool:
    return type(value) is str or (type(value) is list and all(type(item) is str for item in value))


def _needs_exact(record: dict) -> bool:
    """Values whose text depends on how a huge integer literal was parsed: re-parse those with `json`."""
    question = record.get("question_orig") or record.get("question") or ""
    return not (_is_text(record.get("image", "")) and type(question) is str)


def reference_record_line(record: dict, path: Path, offset: int) -> str | None:
    """The reference's PRM record for a kept rollout as `json.dumps(..., ensure_ascii=False)` text,
    or None when the reference drops it (empty image, no steps, an empty step or a non-numeric score)."""
    image = record.get("image", "")
    if not image:
        return None
    steps = record.get("steps_with_score") or []
    if not steps:
        return None
    parts: list[str] = []
    labels: list[str] = []
    for index, step in enumerate(steps):
        text = step.get("step") or ""
        if type(text) is not str:
            raise MPRMError(
                f"{_where(path, offset)}: field 'steps_with_score[{index}].step' must be a string, got {type(text).__name__}"
            )
        text = text.strip()
        score = step.get("score")
        if not text or score is None:
            return None
        value = _numeric(score, path, offset, index)
        if value is None:
            return None
        parts.append(text + "<prm>")
        labels.append("1.0" if value > 0.0 else "0.0")
    question = str(record.get("question_orig") or record.get("question") or "").strip()
    human = f"Question: {question}\nProcess: " + "\n\n".join(parts)
    image_json = encode_basestring(image) if type(image) is str else json.dumps(image, ensure_ascii=False)
    return (
        '{"image": '
        + image_json
        + ', "conversations": [{"from": "human", "value": '
        + encode_basestring(human)
        + '}, {"from": "gpt", "value": ['
        + ", ".join(labels)
        + "]}]}"
    )


def _prm_line_bytes(image: str | list[str], question: str, texts: list[str], labels: list[bytes]) -> bytes:
    """The PRM line + "\n" as UTF-8 from already stripped, non-empty step texts and their labels
    (b"1.0" / b"0.0"). `orjson.dumps` of a string writes exactly `encode_basestring`'s text, encoded (a
    test checks every code point), and raises on a lone surrogate (then the caller takes the careful
    path), so no `str` round trip is needed; a list image is written with `json.dumps`'s ", "
    separator."""
    dumps = orjson.dumps
    image_json = dumps(image) if type(image) is str else b"[" + b", ".join(map(dumps, image)) + b"]"
    human = "Question: " + question.strip() + "\nProcess: " + "<prm>\n\n".join(texts) + "<prm>"
    return b"".join(
        (
            b'{"image": ',
            image_json,
            b', "conversations": [{"from": "human", "value": ',
            dumps(human),
            b'}, {"from": "gpt", "value": [',
            b", ".join(labels),
            b"]}]}\n",
        )
    )


def _fast_record_bytes(record: object, scores: list[float] | None = None) -> bytes | None:
    """`reference_record_line` + "\n" as UTF-8 for a well-formed parsed record (string image and
    question, string steps, float-convertible scores); anything else raises, and the caller takes the
    careful path. `scores`, when given, are `float(step["score"])` of every step, already computed."""
    image, steps = record["image"], record["steps_with_score"]  # type: ignore[index]
    question = record.get("question_orig") or record.get("question") or ""  # type: ignore[union-attr]
    if type(image) is not str or type(question) is not str or type(steps) is not list:
        raise TypeError("not the common shape")
    texts = [step["step"].strip() for step in steps]
    if scores is None:
        scores = [float(step["score"]) for step in steps]
    if not (image and steps and all(texts)):
        return None
    return _prm_line_bytes(image, question, texts, [b"1.0" if score > 0.0 else b"0.0" for score in scores])


def _typed_record_bytes(record: _PRMRecord) -> bytes | None:
    """The same for a record `_decode_prm_lines` read. Every field already has its common type (a
    string or null text, a finite float or null score), so the reference can only drop such a record
    (an empty image, no steps, an empty or null text, a null score), never crash on it. One loop over
    the steps that stops at the first reason to drop: this is the per-line cost of a warm run."""
    image, steps = record.image, record.steps_with_score
    if not image or not steps:
        return None
    texts, labels = [], []
    for step in steps:
        text, score = step.step, step.score
        if text is None or score is None:
            return None
        text = text.strip()
        if not text:
            return None
        texts.append(text)
        labels.append(b"1.0" if score > 0.0 else b"0.0")
    return _prm_line_bytes(image, record.question_orig or record.question or "", texts, labels)  # type: ignore[arg-type]


_COMMON_SHAPE_ERRORS = (TypeError, ValueError, KeyError, AttributeError, OverflowError)


def _convert_parsed(
    record: object, raw: bytes | memoryview, path: Path, offset: int, scores: list[float] | None
) -> bytes | None:
    """Convert a line orjson already parsed; the careful path re-reads it when the shape is unusual."""
    try:
        return _fast_record_bytes(record, scores)
    except _COMMON_SHAPE_ERRORS:
        return _convert_careful(bytes(raw), path, offset)


def _convert_typed(record: _PRMRecord, raw: bytes | memoryview, path: Path, offset: int) -> bytes | None:
    """Convert a line `_decode_prm_lines` already read; the careful path re-reads it when it must."""
    try:
        return _typed_record_bytes(record)
    except _COMMON_SHAPE_ERRORS:
        return _convert_careful(bytes(raw), path, offset)


def convert_line(raw: bytes, path: Path, offset: int) -> bytes | None:
    """Parse one kept line again and convert it: its PRM line + "\n" as UTF-8, or None when the
    reference would drop it."""
    try:
        return _fast_record_bytes(orjson.loads(raw))
    except _COMMON_SHAPE_ERRORS:
        return _convert_careful(raw, path, offset)


def _convert_careful(raw: bytes, path: Path, offset: int) -> bytes | None:
    """The reference's conversion rule by rule, with `json` wherever orjson could differ."""
    stripped = raw.strip()
    record, _, parsed_by_json = _record_and_scores(stripped, path, offset)
    if not parsed_by_json and _needs_exact(record):  # type: ignore[arg-type]
        record, parsed_by_json = _loads(stripped, path, offset, exact=True), True
    line = reference_record_line(record, path, offset)  # type: ignore[arg-type]
    if line is None:
        return None
    try:  # only `json` lets lone surrogates through
        return (line + "\n").encode("utf-8")
    except UnicodeEncodeError:
        raise MPRMError(
            f"{_where(path, offset)}: text holds a lone surrogate escape and cannot be written as UTF-8"
        ) from None


def convert_chunk(task: tuple[str, list[int], list[int]]) -> list[bytes | None]:
    """Convert kept lines of one file given by (offset, length): a worker's unit of output work. The
    lines are read in one `msgspec` call when all have the common shape, else one by one."""
    name, offsets, lengths = task
    path = Path(name)
    descriptor = os.open(name, os.O_RDONLY)
    try:
        joined = b"\n".join(
            [os.pread(descriptor, length, offset) for offset, length in zip(offsets, lengths, strict=True)]
        )
    finally:
        os.close(descriptor)
    try:  # a ranked line holds no newline and one JSON value: one line each
        records = _decode_prm_lines(joined)
    except _DECODE_ERRORS:
        records = []
    if len(records) != len(offsets):
        raws = joined.split(b"\n")
        return [convert_line(raw, path, offset) for raw, offset in zip(raws, offsets, strict=True)]
    view = memoryview(joined)
    starts = accumulate([length + 1 for length in lengths], initial=0)
    return [
        _convert_typed(record, view[start : start + length], path, offset)
        for record, start, length, offset in zip(records, starts, lengths, offsets, strict=False)
    ]


def convert_chunk_to_file(task: tuple[str, list[int], list[int], str]) -> tuple[str, list[bool]]:
    """`convert_chunk`, its lines written to a file of their own in the folder `task[3]`: a worker
    hands back a path and which lines were written, not megabytes through the pool's pipe (a result
    larger than the pipe stalls the worker until the busy calling process reads it)."""
    name, offsets, lengths, folder = task
    lines = convert_chunk((name, offsets, lengths))
    descriptor, part_path = tempfile.mkstemp(dir=folder, suffix=".jsonl")
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(b"".join([line for line in lines if line is not None]))
    return part_path, [line is not None for line in lines]


def _append_file(sink: BinaryIO, part_path: str) -> None:
    """Append a part file to an unbuffered `sink` (a copy in the kernel where the OS has one), then
    delete it."""
    with open(part_path, "rb") as source:
        remaining = os.fstat(source.fileno()).st_size
        try:
            while remaining:
                remaining -= os.copy_file_range(source.fileno(), sink.fileno(), remaining)
        except (AttributeError, OSError):  # no copy_file_range here (or not between these files)
            if remaining != os.fstat(source.fileno()).st_size:
                raise
            shutil.copyfileobj(source, sink)
    os.unlink(part_path)


def write_reference(
    files: Sequence[Path],
    scores: pa.Table,
    rows: np.ndarray,
    output: str | os.PathLike,
    *,
    num_proc: int | None = None,
    progress: bool = True,
    chunk_rows: int = CONVERT_ROWS,
    records_dir: Path | None = None,
    workers: Workers | None = None,
) -> np.ndarray:
    """Convert the kept rows (re-read by byte offset, on the pool) and write them in file order.

    Returns which of `rows` were written (the others were dropped at conversion, as the reference
    drops them). Writes to a temporary name first, so a failure leaves no half-written output."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if records_dir is not None:
        return _write_cached_records(scores, rows, output, records_dir)
    file_of = column_numpy(scores, "file")[rows]
    offsets = column_numpy(scores, "offset")[rows]
    lengths = column_numpy(scores, "length")[rows]
    written = np.zeros(len(rows), dtype=bool)
    temporary = output.with_name(output.name + ".partial")
    own = workers is None
    position = 0
    try:
        with (
            tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as parts,
            _progress_bar(progress, total=len(rows), desc="Writing PRM records", unit="rollout") as bar,
            temporary.open("wb", buffering=0) as sink,
        ):
            tasks = []
            for file_index in np.unique(file_of).tolist():
                positions = np.flatnonzero(file_of == file_index)
                for start in range(0, len(positions), chunk_rows):
                    part = positions[start : start + chunk_rows]
                    tasks.append(
                        (str(files[file_index]), offsets[part].tolist(), lengths[part].tolist(), parts)
                    )
            workers = workers or Workers(num_proc, len(tasks))
            for part_path, kept in workers.imap(convert_chunk_to_file, tasks):
                _append_file(sink, part_path)
                written[position : position + len(kept)] = kept
                position += len(kept)
                bar.update(len(kept))
        temporary.replace(output)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    finally:
        if own and workers is not None:
            workers.close()
    return written


def _records_batch(records_dir: Path, shard: int) -> pa.RecordBatch:
    """One shard of the records cache, memory-mapped (a plain `mmap` under `pa.py_buffer` opens in a
    third of `pa.memory_map`'s time, which counts when a warm run opens ~200 shards)."""
    with open(records_dir / f"{shard:06d}.arrow", "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    return pa.ipc.open_stream(pa.py_buffer(mapped)).read_next_batch()


def _write_cached_records(scores: pa.Table, rows: np.ndarray, output: Path, records_dir: Path) -> np.ndarray:
    """Write kept rows from the records cache. Each cached PRM line ends with its newline and a dropped
    rollout's is empty, so a shard's kept lines are byte ranges read off its Arrow offsets; ranges that
    touch are merged and copied to the file: a few numpy calls per shard, one slice per merged range,
    no Python object per row. One shard is mapped at a time, so memory does not grow with the cache."""
    shard_starts = np.cumsum([0] + [len(chunk) for chunk in scores.column("file").chunks], dtype=np.int64)
    cuts = np.searchsorted(rows, shard_starts).tolist()  # rows ascend: each shard's kept rows are one slice
    written = np.zeros(len(rows), dtype=bool)
    temporary = output.with_name(output.name + ".partial")
    try:
        with temporary.open("wb", buffering=1 << 20) as sink:
            for shard, (begin, stop) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
                if begin == stop:
                    continue
                lines, errors = _records_batch(records_dir, shard).columns
                positions = rows[begin:stop] - shard_starts[shard]
                if errors.null_count != len(errors):  # a kept line the reference would crash on
                    for error in errors.take(_arrow(positions, pa.int64())).to_pylist():
                        if error is not None:
                            raise MPRMError(error)
                bounds = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset :]
                starts, ends = bounds[positions], bounds[positions + 1]
                nonempty = ends > starts
                written[begin:stop] = nonempty
                starts, ends = starts[nonempty], ends[nonempty]
                if not len(starts):
                    continue
                new_run = np.ones(len(starts), dtype=bool)  # a range that does not continue the previous one
                new_run[1:] = starts[1:] != ends[:-1]
                ends_run = np.ones(len(starts), dtype=bool)  # a range that the next one does not continue
                ends_run[:-1] = new_run[1:]
                view = memoryview(lines.buffers()[2])
                sink.writelines(
                    [
                        view[a:b]
                        for a, b in zip(starts[new_run].tolist(), ends[ends_run].tolist(), strict=True)
                    ]
                )
                del view, lines, errors  # unmaps the shard
        temporary.replace(output)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return written


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
        return Path(os.environ["HF_DATASETS_CACHE"]) / "mprm_hf_reference_scores"
    hf_home = (
        os.environ.get("HF_HOME")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    )
    return Path(hf_home) / "datasets" / "mprm_hf_reference_scores"


@dataclass
class _CachePaths:
    """Where the score table of these files (and, with `--cache-records`, their PRM lines) is cached."""

    folder: Path
    scores: Path
    counts: Path
    records: Path

    @classmethod
    def of(cls, files: Sequence[Path], cache_dir: str | os.PathLike | None) -> _CachePaths:
        key = _fingerprint(files)
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        return cls(
            folder, folder / f"{key}.scores.arrow", folder / f"{key}.counts.json", folder / f"{key}.records"
        )

    def store(self, partial: Path, counts: list[ScanCounts]) -> None:
        """Move a freshly written score table into the cache, with its per-file counts."""
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.move(partial, self.folder / f"{self.scores.name}.partial")
        os.replace(self.folder / f"{self.scores.name}.partial", self.scores)
        self.counts.write_text(json.dumps([vars(count) for count in counts]))


def scan_by_shards(
    files: Sequence[Path],
    cache: _CachePaths | None,
    *,
    cache_records: bool = False,
    num_proc: int | None = None,
    progress: bool = True,
    shard_bytes: int = SHARD_BYTES,
    workers: Workers | None = None,
) -> tuple[pa.Table, list[ScanCounts], Path | None]:
    """Scan the files by shards into a score table, stored in `cache` when given (an Arrow stream file,
    which `datasets.Dataset.from_file` loads, in the `datasets` cache folder, keyed by the files'
    paths, sizes and mtimes, so an edited corpus is scanned again). With `cache_records` (and a cache)
    every ranked rollout's PRM line is cached too. Returns (table, counts, records_dir or None)."""
    records_dir = cache.records if cache is not None and cache_records else None
    with tempfile.TemporaryDirectory(prefix="mprm-scores-") as scratch:
        partial = Path(scratch) / "scores.arrow"
        if records_dir is not None:
            shutil.rmtree(records_dir, ignore_errors=True)
        counts = scan_files(
            files,
            partial,
            num_proc=num_proc,
            progress=progress,
            shard_bytes=shard_bytes,
            records_dir=records_dir,
            workers=workers,
        )
        table = read_score_table(partial)
        if cache is not None:
            cache.store(partial, counts)
            if records_dir is not None:
                (records_dir / "complete").touch()
    return table, counts, records_dir


def _from_cache(
    paths: _CachePaths, cache_records: bool
) -> tuple[pa.Table, list[ScanCounts], Path | None] | None:
    """(table, counts, records_dir or None) when the cache holds what is asked for, else None."""
    have_records = (paths.records / "complete").exists()
    if not (paths.scores.exists() and paths.counts.exists() and (have_records or not cache_records)):
        return None
    counts = [ScanCounts(**entry) for entry in json.loads(paths.counts.read_text())]
    return read_score_table(paths.scores), counts, paths.records if have_records else None


# ---------------------------------------------------------------------------------- cold, per file
@dataclass
class FileSelection:
    """One file scanned, ranked and its kept lines converted, by one process. What comes back is small:
    the score table rows and the PRM lines are in part files."""

    counts: ScanCounts
    table_part: str  # the file's score table rows, an Arrow stream
    kept: np.ndarray  # positions among the file's ranked lines, ascending
    parts: list[tuple[str, list[bool]]]  # part files of the kept lines' PRM lines, and which were written


def select_file(task: tuple[int, str, list[tuple[int, int]], float, float, str]) -> FileSelection:
    """The reference's loop for one file, in one process: score every line (a shard at a time), take
    the file's top-k, convert those lines (their pages still in memory) into part files."""
    file_index, name, ranges, alpha, top_ratio, parts = task
    scans = [scan_shard((file_index, name, start, end, None)) for start, end in ranges]

    def column(key: str, dtype: type) -> np.ndarray:
        return np.concatenate(
            [np.zeros(0, dtype=dtype)] + [np.asarray(getattr(scan, key), dtype=dtype) for scan in scans]
        )

    bis = reference_bis(
        column("n_scored", np.int64), column("n_pos", np.int64), column("sum_pos", np.float64), alpha
    )
    kept = kept_positions(bis, top_ratio)
    offsets, lengths = column("offsets", np.int64)[kept].tolist(), column("lengths", np.int64)[kept].tolist()
    chunks = [
        convert_chunk_to_file(
            (name, offsets[start : start + CONVERT_ROWS], lengths[start : start + CONVERT_ROWS], parts)
        )
        for start in range(0, len(offsets), CONVERT_ROWS)
    ]
    table_part = os.path.join(parts, f"{file_index:06d}.arrow")
    with pa.OSFile(table_part, "wb") as sink, pa.ipc.new_stream(sink, SCORE_TABLE_SCHEMA) as writer:
        for scan in scans:
            writer.write_batch(scan.batch())
    counts = ScanCounts()
    for scan in scans:
        counts.add(scan)
    return FileSelection(counts, table_part, kept, chunks)


def _files_balance(files: Sequence[Path], processes: int) -> bool:
    """Whether whole files, as tasks, can keep `processes` busy: no file is more than 1/processes of
    the corpus (else the scan is shared out by shards, and the kept lines converted after it)."""
    sizes = [path.stat().st_size for path in files]
    return len(files) >= processes and max(sizes) * processes <= sum(sizes)


def scan_select_write(
    files: Sequence[Path],
    output: Path,
    cache: _CachePaths | None,
    *,
    alpha: float,
    top_ratio: float,
    workers: Workers,
    progress: bool = True,
    shard_bytes: int = SHARD_BYTES,
) -> tuple[pa.Table, list[ScanCounts], np.ndarray, np.ndarray]:
    """A cold run in one pass: each file is scanned, ranked and converted by one process (as the
    reference does it, file by file), so nothing waits for the whole corpus to be scanned first.
    Writes the subset to `output` (via a temporary name) and the score table to `cache` when given.
    Returns (table, counts, kept rows of the table, which of them were written)."""
    ranges: dict[int, list[tuple[int, int]]] = {}
    for file_index, _, start, end, _ in shard_tasks(files, shard_bytes):
        ranges.setdefault(file_index, []).append((start, end))
    counts = [ScanCounts() for _ in files]
    kept_rows: list[np.ndarray] = []
    written: list[bool] = []
    first_row = 0
    temporary = output.with_name(output.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="mprm-scores-") as scratch:
        scores_path = Path(scratch) / "scores.arrow"
        try:
            with (
                tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as parts,
                _progress_bar(progress, total=len(files), desc="Selecting rollouts", unit="file") as bar,
                pa.OSFile(str(scores_path), "wb") as table_sink,
                pa.ipc.new_stream(table_sink, SCORE_TABLE_SCHEMA) as table_writer,
                temporary.open("wb", buffering=0) as sink,
            ):
                tasks = [
                    (index, str(path), ranges.get(index, []), alpha, top_ratio, parts)
                    for index, path in enumerate(files)
                ]
                for file_index, selection in enumerate(workers.imap(select_file, tasks)):
                    with pa.memory_map(selection.table_part) as source:
                        for batch in pa.ipc.open_stream(source):
                            table_writer.write_batch(batch)
                    os.unlink(selection.table_part)
                    for part_path, part_written in selection.parts:
                        _append_file(sink, part_path)
                        written += part_written
                    counts[file_index] = selection.counts
                    kept_rows.append(selection.kept + first_row)
                    first_row += selection.counts.ranked
                    bar.update(1)
            temporary.replace(output)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        table = read_score_table(scores_path)
        if cache is not None:
            cache.store(scores_path, counts)
    rows = np.concatenate(kept_rows) if kept_rows else np.zeros(0, dtype=np.int64)
    return table, counts, rows, np.asarray(written, dtype=bool)


# ----------------------------------------------------------------------------------------------- API
@dataclass
class ReferenceResult:
    """What a reference-format run did, per file, for the terminal table and the card."""

    files: list[Path]
    counts: list[ScanCounts]
    cached: bool
    table: pa.Table = field(repr=False)  # the score table: one row per ranked rollout
    bis: np.ndarray = field(repr=False)  # per table row
    kept: np.ndarray = field(repr=False)  # per table row: chosen by the ranking
    written: np.ndarray = field(repr=False)  # per table row: chosen and converted (in the output)

    @property
    def n_written(self) -> int:
        return int(self.written.sum())


def build_reference_subset(
    annotations_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    alpha: float,
    top_ratio: float,
    num_proc: int | None = None,
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    cache_records: bool = False,
    progress: bool = True,
    shard_bytes: int = SHARD_BYTES,
) -> ReferenceResult:
    """Write the reference's BIS subset of `annotations_dir` to `output` (same bytes as the reference)."""
    if not (isinstance(top_ratio, (int, float)) and 0.0 < top_ratio <= 1.0):
        raise MPRMError(f"--top-ratio must be in (0, 1], got {top_ratio!r}")
    if not math.isfinite(float(alpha)):
        raise MPRMError(f"--alpha must be a finite number, got {alpha!r}")
    files = annotation_files(annotations_dir)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    cache = _CachePaths.of(files, cache_dir) if use_cache else None
    with Workers(num_proc) as workers:
        cached = _from_cache(cache, cache_records) if cache is not None else None
        if cached is None and not cache_records and _files_balance(files, workers.count):
            table, counts, rows, written_rows = scan_select_write(
                files, output, cache, alpha=float(alpha), top_ratio=float(top_ratio), workers=workers,
                progress=progress, shard_bytes=shard_bytes,
            )  # fmt: skip
            bis = table_bis(table, float(alpha))
        else:
            table, counts, records_dir = cached or scan_by_shards(
                files, cache, cache_records=cache_records, num_proc=num_proc, progress=progress,
                shard_bytes=shard_bytes, workers=workers,
            )  # fmt: skip
            rows, bis = select_reference_rows(table, len(files), float(alpha), float(top_ratio))
            written_rows = write_reference(
                files, table, rows, output, progress=progress, records_dir=records_dir, workers=workers
            )
    kept = np.zeros(table.num_rows, dtype=bool)
    kept[rows] = True
    written = np.zeros(table.num_rows, dtype=bool)
    written[rows[written_rows]] = True
    return ReferenceResult(files, counts, cached is not None, table, bis, kept, written)
