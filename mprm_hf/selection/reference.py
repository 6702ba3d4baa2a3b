"""The reference BIS subset (`build_bis_subset.py`, SPEC 3), byte for byte, and fast.

The reference reads every annotation file whole, `json.loads` every line, scores it in Python, sorts,
and converts the kept rollouts. This module gives the same bytes with three changes that do not touch
the result:

* **Scan once, rank many times.** A scan keeps, per ranked line, only its byte span and the three
  numbers BIS needs (`n_scored`, `n_pos`, `sum_pos`). That table is cached as Arrow through `datasets`
  (keyed by the files' size and mtime), so a new alpha or ratio never reads the corpus again; only the
  kept lines are re-read (by byte offset) and converted.
* **orjson first, `json` when it must.** Every line goes through `orjson`; a line orjson rejects
  (NaN / Infinity literals, lone surrogates, numbers out of range, Unicode whitespace around the
  record) is parsed again with `json.loads`, and a value orjson may have widened (an integer beyond
  64 bits becomes a float there) sends the line to `json.loads` too. Both parsers give identical
  values on every line both accept.
* **Shards on both cores.** Files are cut into newline-aligned shards scanned by a process pool.

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

import hashlib
import json
import math
import multiprocessing
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring  # the exact string encoder json.dumps(ensure_ascii=False) uses
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

from mprm_hf.errors import MPRMError

SHARD_BYTES = 32 * 1024 * 1024
"""Bytes per scan shard: small enough to bound a worker's memory, large enough to amortise the pool."""

_WIDENED = float(2**63)  # orjson turns integer literals beyond 64 bits into floats at least this large
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
        ("record", pa.string()),  # the reference's PRM line for this rollout, null if it would drop it
        ("error", pa.string()),  # why the reference would crash on this rollout if it kept it
    ]
)
SCORE_TABLE_VERSION = 2


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


def _numeric(value: object) -> float | None:
    """`float(value)` if the reference counts it as a score, else None (OverflowError propagates)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


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
        elif kind is int:
            scores.append(float(score))
        elif score is not None:
            try:
                value = _numeric(score)
            except OverflowError:
                raise MPRMError(
                    f"{_where(path, offset)}: field 'steps_with_score[{index}].score' is too large for a float"
                ) from None
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
    """What one shard contributes to the score table, plus counts for the report."""

    file: int
    offsets: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    n_scored: list[int] = field(default_factory=list)
    n_pos: list[int] = field(default_factory=list)
    sum_pos: list[float] = field(default_factory=list)
    records: list[str | None] = field(default_factory=list)  # the converted PRM line, None = dropped
    errors: list[str | None] = field(default_factory=list)  # where the reference would crash if kept
    blank: int = 0
    invalid_json: int = 0
    no_numeric_score: int = 0

    def batches(self) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """(scores, records): two files, so that ranking never reads the PRM lines."""
        scores = pa.RecordBatch.from_arrays(
            [
                pa.array(np.full(len(self.offsets), self.file, dtype=np.int32)),
                pa.array(np.asarray(self.offsets, dtype=np.int64)),
                pa.array(np.asarray(self.lengths, dtype=np.int64)),
                pa.array(np.asarray(self.n_scored, dtype=np.int32)),
                pa.array(np.asarray(self.n_pos, dtype=np.int32)),
                pa.array(np.asarray(self.sum_pos, dtype=np.float64)),
            ],
            schema=SCORE_TABLE_SCHEMA,
        )
        records = pa.RecordBatch.from_arrays(
            [pa.array(self.records, type=pa.string()), pa.array(self.errors, type=pa.string())],
            schema=RECORDS_SCHEMA,
        )
        return scores, records


def _convert_ranked(
    record: dict, path: Path, offset: int, parsed_by_json: bool
) -> tuple[str | None, str | None]:
    """(PRM line or None, error or None) of a ranked rollout; errors only matter if it is kept."""
    try:
        line = reference_record_line(record, path, offset)
        if line is not None and parsed_by_json:  # only `json` lets lone surrogates through
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:
                raise MPRMError(
                    f"{_where(path, offset)}: text holds a lone surrogate escape and cannot be written as UTF-8"
                ) from None
        return line, None
    except MPRMError as error:
        return None, str(error)


def scan_shard(task: tuple[int, str, int, int]) -> ShardScan:
    """Score and convert every line of bytes [start, end) of one file (a worker's unit of work).

    The fast path assumes a well-formed record and lets any exception send the line to the careful
    path, which reproduces the reference's semantics rule by rule."""
    file_index, name, start, end = task
    path = Path(name)
    with path.open("rb") as handle:
        handle.seek(start)
        buffer = handle.read(end - start)
    out = ShardScan(file_index)
    loads = orjson.loads
    for position, piece in _split_lines(buffer):
        stripped = piece.strip()
        if not stripped:
            if piece:
                out.blank += 1
            continue
        offset = start + position
        try:
            record = loads(stripped)
            scores = [float(step["score"]) for step in record["steps_with_score"]]
            fast = (
                type(record) is dict and bool(scores) and min(scores) > -_WIDENED and max(scores) < _WIDENED
            )
        except (TypeError, ValueError, KeyError, OverflowError):
            fast = False
        parsed_by_json = False
        if not fast:
            record, scores, parsed_by_json = _record_and_scores(stripped, path, offset)
            if scores is None:
                if record is _BLANK:
                    out.blank += 1
                else:
                    out.invalid_json += 1
                continue
            if not scores:
                out.no_numeric_score += 1
                continue
        if not parsed_by_json and _needs_exact(record):
            record = _loads(stripped, path, offset, exact=True)
            parsed_by_json = True
        positives = [score for score in scores if score > 0.0]
        out.offsets.append(offset)
        out.lengths.append(len(piece))
        out.n_scored.append(len(scores))
        out.n_pos.append(len(positives))
        out.sum_pos.append(sum(positives))
        line, error = _convert_ranked(record, path, offset, parsed_by_json)
        out.records.append(line)
        out.errors.append(error)
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


@dataclass
class ScanCounts:
    """Per-file line counts of a scan: what the reference silently skips, made visible."""

    ranked: int = 0
    blank: int = 0
    invalid_json: int = 0
    no_numeric_score: int = 0


def scan_files(
    files: Sequence[Path],
    scores_path: Path,
    records_path: Path,
    *,
    num_proc: int | None = None,
    progress: bool = True,
    shard_bytes: int = SHARD_BYTES,
) -> list[ScanCounts]:
    """Scan all files (shards on a process pool) into two Arrow files: scores and PRM lines.

    Shards stream into the files as they finish, in order, so memory holds one shard per worker and
    the two files share their batch boundaries (one batch per shard)."""
    from tqdm.auto import tqdm

    tasks = shard_tasks(files, shard_bytes)
    workers = max(1, min(num_proc or os.cpu_count() or 1, len(tasks)))
    counts = [ScanCounts() for _ in files]
    total = sum(end - start for _, _, start, end in tasks)
    with (
        tqdm(total=total, unit="B", unit_scale=True, desc="Scoring rollouts", disable=not progress) as bar,
        pa.ipc.new_file(str(scores_path), SCORE_TABLE_SCHEMA) as score_writer,
        pa.ipc.new_file(str(records_path), RECORDS_SCHEMA) as record_writer,
    ):
        if workers == 1:
            results: Iterator[ShardScan] = map(scan_shard, tasks)
            pool = None
        else:
            pool = multiprocessing.get_context("fork").Pool(workers)
            results = pool.imap(scan_shard, tasks)
        try:
            for task, result in zip(tasks, results, strict=True):
                scores, records = result.batches()
                score_writer.write_batch(scores)
                record_writer.write_batch(records)
                tally = counts[result.file]
                tally.ranked += len(result.offsets)
                tally.blank += result.blank
                tally.invalid_json += result.invalid_json
                tally.no_numeric_score += result.no_numeric_score
                bar.update(task[3] - task[2])
        finally:
            if pool is not None:
                pool.terminate()
    return counts


def read_score_table(scores_path: Path) -> pa.Table:
    """The compact per-rollout score table (~40 bytes a rollout), one chunk per scanned shard."""
    with pa.OSFile(str(scores_path)) as source:
        return pa.ipc.open_file(source).read_all()


# -------------------------------------------------------------------------------------------- ranking
def reference_bis(n_scored: np.ndarray, n_pos: np.ndarray, sum_pos: np.ndarray, alpha: float) -> np.ndarray:
    """BIS exactly as the reference's Python floats give it: same operations, same order, IEEE doubles.

    p_pos = n_pos / n;  R = sum_pos / n_pos (1.0 when n_pos == 0);  BIS = (p_pos * (1 - p_pos) + alpha) * R
    """
    n_pos_float = n_pos.astype(np.float64)
    p_pos = n_pos_float / n_scored.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        reliability = np.where(n_pos > 0, sum_pos / np.where(n_pos > 0, n_pos_float, 1.0), 1.0)
        return (p_pos * (1.0 - p_pos) + float(alpha)) * reliability


def reference_top_k(m: int, top_ratio: float) -> int:
    """The reference's budget, `max(1, int(m * r))`, in Python arithmetic on purpose."""
    return max(1, int(m * top_ratio))


def rank_descending(bis: np.ndarray) -> np.ndarray:
    """Positions by BIS descending, ties in file order: what `list.sort(key=..., reverse=True)` gives."""
    if np.isnan(bis).any():  # NaN compares false both ways: only Python's own sort reproduces Python's order
        values = bis.tolist()
        return np.asarray(sorted(range(len(values)), key=values.__getitem__, reverse=True), dtype=np.int64)
    return np.argsort(-bis, kind="stable")


def select_reference_rows(table: pa.Table, n_files: int, alpha: float, top_ratio: float) -> np.ndarray:
    """Row numbers (into the score table) of the kept rollouts, in file order then line order."""
    files = table.column("file").to_numpy()
    bis = reference_bis(
        table.column("n_scored").to_numpy(),
        table.column("n_pos").to_numpy(),
        table.column("sum_pos").to_numpy(),
        alpha,
    )
    bounds = np.searchsorted(files, np.arange(n_files + 1))
    kept = []
    for file_index in range(n_files):
        start, end = int(bounds[file_index]), int(bounds[file_index + 1])
        if end == start:
            continue
        order = rank_descending(bis[start:end])
        kept.append(np.sort(order[: reference_top_k(end - start, top_ratio)]) + start)
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


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
        try:
            value = _numeric(score)
        except OverflowError:
            raise MPRMError(
                f"{_where(path, offset)}: field 'steps_with_score[{index}].score' is too large for a float"
            ) from None
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


def write_reference(
    scores: pa.Table, records_path: Path, rows: np.ndarray, output: str | os.PathLike
) -> np.ndarray:
    """Write the kept rows' PRM lines; returns which of `rows` were written (the rest were dropped at
    conversion, as the reference drops them).

    Reads the PRM lines one shard batch at a time (never the whole file) and writes to a temporary
    name first, so a failure never leaves a half-written output behind."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    batch_ends = np.cumsum([len(chunk) for chunk in scores.column("file").chunks])
    row_batches = np.searchsorted(batch_ends, rows, side="right")
    temporary = output.with_name(output.name + ".partial")
    written = np.zeros(len(rows), dtype=bool)
    try:
        with pa.OSFile(str(records_path)) as source, temporary.open("w", encoding="utf-8") as sink:
            reader = pa.ipc.open_file(source)
            for batch_index in np.unique(row_batches).tolist():
                selected = rows[row_batches == batch_index]
                first_row = int(batch_ends[batch_index - 1]) if batch_index else 0
                batch = reader.get_batch(batch_index)
                positions = pa.array(selected - first_row)
                errors = batch.column(1).take(positions)
                if errors.null_count != len(errors):
                    raise MPRMError(next(error for error in errors.to_pylist() if error is not None))
                chunk = batch.column(0).take(positions).to_pylist()
                lines = [line for line in chunk if line is not None]
                if lines:
                    sink.write("\n".join(lines) + "\n")
                written[row_batches == batch_index] = [line is not None for line in chunk]
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


def load_or_scan(
    files: Sequence[Path],
    work_dir: Path,
    *,
    num_proc: int | None = None,
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    shard_bytes: int = SHARD_BYTES,
) -> tuple[pa.Table, Path, list[ScanCounts], bool]:
    """The score table and PRM-line file of these files from the cache, or a fresh scan.

    Returns (score table, records path, counts, was_cached). Both are Arrow IPC files (which
    `datasets.Dataset.from_file` also reads). Without the cache they are written under `work_dir`."""
    key = _fingerprint(files)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not use_cache:
        folder = work_dir
    scores_path, records_path = folder / f"{key}.scores.arrow", folder / f"{key}.records.arrow"
    counts_path = folder / f"{key}.counts.json"
    if use_cache and scores_path.exists() and records_path.exists() and counts_path.exists():
        counts = [ScanCounts(**entry) for entry in json.loads(counts_path.read_text())]
        return read_score_table(scores_path), records_path, counts, True
    folder.mkdir(parents=True, exist_ok=True)
    partials = [path.with_name(path.name + ".partial") for path in (scores_path, records_path)]
    try:
        counts = scan_files(files, *partials, num_proc=num_proc, progress=progress, shard_bytes=shard_bytes)
    except BaseException:
        for partial in partials:
            partial.unlink(missing_ok=True)
        raise
    partials[0].replace(scores_path)
    partials[1].replace(records_path)
    counts_path.write_text(json.dumps([vars(count) for count in counts]))
    return read_score_table(scores_path), records_path, counts, False


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
    progress: bool = True,
    shard_bytes: int = SHARD_BYTES,
) -> ReferenceResult:
    """Write the reference's BIS subset of `annotations_dir` to `output` (same bytes as the reference)."""
    if not (isinstance(top_ratio, (int, float)) and 0.0 < top_ratio <= 1.0):
        raise MPRMError(f"--top-ratio must be in (0, 1], got {top_ratio!r}")
    if not math.isfinite(float(alpha)):
        raise MPRMError(f"--alpha must be a finite number, got {alpha!r}")
    files = annotation_files(annotations_dir)
    with tempfile.TemporaryDirectory(prefix="mprm-select-") as work_dir:
        table, records_path, counts, cached = load_or_scan(
            files,
            Path(work_dir),
            num_proc=num_proc,
            use_cache=use_cache,
            cache_dir=cache_dir,
            progress=progress,
            shard_bytes=shard_bytes,
        )
        rows = select_reference_rows(table, len(files), float(alpha), float(top_ratio))
        written_rows = write_reference(table, records_path, rows, output)
    kept = np.zeros(table.num_rows, dtype=bool)
    kept[rows] = True
    written = np.zeros(table.num_rows, dtype=bool)
    written[rows[written_rows]] = True
    bis = reference_bis(
        table.column("n_scored").to_numpy(),
        table.column("n_pos").to_numpy(),
        table.column("sum_pos").to_numpy(),
        alpha,
    )
    return ReferenceResult(files, counts, cached, table, bis, kept, written)
