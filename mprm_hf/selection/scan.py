"""The scan: every annotation file read once into a per-rollout score table, cached.

`scan_corpus(DIR)` reads every line by the reference's rules (`mprm_hf.data.rollout`), so a rollout is
in the table exactly when the reference ranks it, and counts every line it skips by reason, with file
and line. Per ranked rollout the table holds its file, line, byte span, `n_steps`, `n_scored` (steps
with a numeric score), `n_pos` and `sum_pos` (float64, summed in the reference's order), and, when the
entropy selector asks for it, `entropy` (the mean step entropy under a PRM, computed in the same call
and cached with the table). It is an Arrow stream file in the `datasets` cache
(`datasets.Dataset.from_file` loads it), keyed on the files' paths, sizes and mtimes: a new alpha,
ratio, method or format never reads the corpus again, an edited corpus is scanned again, and storing
a corpus's new table removes its stale ones.

How it is fast: files are cut into 8 MiB shards that end at a newline, scanned on a
`concurrent.futures` process pool (largest first). A shard whose every line is plain is read in one
typed `msgspec` call (`rollout.decode_score_lines`); any other shard line by line, each line by the
typed decoder when it can and by `rollout.read_line` when not. Memory holds one shard per process.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mprm_hf.data import rollout as rules
from mprm_hf.errors import MPRMError
from mprm_hf.selection.scores import mean_step_entropy, rollout_statistics

SHARD_BYTES = 8 * 1024 * 1024
"""Bytes per scan shard: small enough to bound a worker's memory, large enough to amortise the pool."""
CHUNK_ROWS = 500
"""Kept lines read again per task (writers, entropy): one typed msgspec call, little memory per worker."""
SKIP_REASONS = (rules.BLANK, rules.NOT_JSON, rules.NO_NUMERIC_SCORE)
EXAMPLES_PER_REASON = 3
_score_of = attrgetter("score")

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
ENTROPY = pa.field("entropy", pa.float64())  # mean step entropy (bits) under a PRM; NaN: not converted
SCORE_TABLE_VERSION = 8


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


def column_numpy(table: pa.Table, name: str) -> np.ndarray:
    """A null-free numeric column as numpy, read straight from its buffers (`to_numpy()` would import
    pandas, +0.4 s; `combine_chunks()` would allocate through Arrow's pool, which keeps the memory)."""
    dtype = np.dtype(table.schema.field(name).type.to_pandas_dtype())
    parts = [
        np.frombuffer(chunk.buffers()[1], dtype=dtype)[chunk.offset : chunk.offset + len(chunk)]
        for chunk in table.column(name).chunks
        if len(chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _arrow(values: Any, kind: pa.DataType) -> pa.Array:
    """A zero-copy Arrow array of a numpy column (`pa.array(ndarray)` would import pandas: +0.4 s)."""
    values = np.ascontiguousarray(values, dtype=kind.to_pandas_dtype())
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def progress_bar(enabled: bool, **options: object):  # noqa: ANN201 - a tqdm bar or a stand-in
    """A tqdm bar, or (`--quiet`) a stand-in, without importing tqdm, which costs ~0.1 s of start-up."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(**options)


class _NoBar:
    def update(self, _: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


def located(path: str | os.PathLike, offset: int, error: MPRMError) -> MPRMError:
    """`error` prefixed with `path:line` of the line at byte `offset` (counted only for the message)."""
    with open(path, "rb") as handle:
        head = handle.read(offset)
    line = head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1
    return MPRMError(f"{path}:{line}: {error}")


# ---------------------------------------------------------------------------------------------- scan
@dataclass
class ShardScan:
    """What one shard contributes to the table (lists while it is read line by line, numpy arrays when it
    is read whole), with its skipped lines by reason. Lines are numbered within the shard."""

    file: int
    start: int
    lines: Any = field(default_factory=list)
    offsets: Any = field(default_factory=list)
    lengths: Any = field(default_factory=list)
    n_steps: Any = field(default_factory=list)
    n_scored: Any = field(default_factory=list)
    n_pos: Any = None
    sum_pos: Any = None
    n_lines: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[str, int]] = field(default_factory=list)  # (reason, line within the shard)

    def skip(self, reason: str, line: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if self.skipped[reason] <= EXAMPLES_PER_REASON:
            self.examples.append((reason, line))

    def batch(self, first_line: int) -> pa.RecordBatch:
        columns = [
            np.full(len(self.offsets), self.file), np.asarray(self.lines) + first_line, self.offsets, self.lengths,
            self.n_steps, self.n_scored, self.n_pos, self.sum_pos,
        ]  # fmt: skip
        return pa.RecordBatch.from_arrays(
            [_arrow(values, item.type) for values, item in zip(columns, SCORE_TABLE_SCHEMA, strict=True)],
            schema=SCORE_TABLE_SCHEMA,
        )


def _may_hold_long_digit_run(buffer: np.ndarray) -> bool:
    """Whether some run of ASCII digits may be longer than `INT_DIGITS`. Such a run covers two
    neighbouring bytes sampled every `INT_DIGITS // 2` and every byte between them: the samples find
    the few candidate stretches, and each is checked whole (sampled pairs of digits are common)."""
    step = rules.INT_DIGITS // 2
    sampled = (buffer[::step] - 48) < 10
    for index in np.flatnonzero(sampled[:-1] & sampled[1:]).tolist():
        if bool(((buffer[index * step : (index + 1) * step + 1] - 48) < 10).all()):
            return True
    return False


def _scan_plain_shard(source: Any, start: int, end: int, out: ShardScan) -> np.ndarray | None:
    """Scores of bytes [start, end) of `source` in one msgspec call, when every line is plain: it starts
    with `{` and ends with `}` right at its newlines (so it is not blank, and as a string never holds a
    raw newline, each newline falls between two top-level values), none holds a digit run over Python's
    integer limit, the decoder reads exactly one record per line, and no score is null. Else None
    (nothing recorded), and the shard is read line by line."""
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
        steps = [record or () for record in rules.decode_score_lines(data)]
    except rules.DECODE_ERRORS:
        return None
    flat = list(map(_score_of, chain.from_iterable(steps)))
    if len(steps) != len(starts) or None in flat:
        return None
    n_scored = np.fromiter(map(len, steps), dtype=np.int64, count=len(steps))
    ranked = n_scored > 0
    out.n_lines = len(starts)
    out.lines = np.flatnonzero(ranked)  # arrays: no Python int per line, and they pickle as buffers
    out.offsets = starts[ranked] + start
    out.lengths = (ends - starts)[ranked]
    out.n_steps = out.n_scored = n_scored[ranked]
    for line in np.flatnonzero(~ranked).tolist():
        out.skip(rules.NO_NUMERIC_SCORE, line)
    return np.asarray(flat, dtype=np.float64)


def _typed_steps(piece: bytes, typed: bool) -> list | None:
    """The line's steps by the typed decoder, or None where it cannot read the line (then `read_line`)."""
    if not typed or len(piece) > rules.INT_DIGITS:
        return None
    try:
        return rules.decode_steps(piece) or []
    except rules.DECODE_ERRORS:
        return None


def _scan_lines(data: bytes, start: int, path: str, out: ShardScan, *, typed: bool) -> np.ndarray:
    """Every line of a shard: by the typed decoder where it reads the line (`typed`: the shard is UTF-8),
    else by `rules.read_line`. Returns the numeric scores of the ranked lines, flattened."""
    flat: list[float] = []
    line = -1
    for line, (position, piece) in enumerate(rules.split_lines(data)):
        steps = _typed_steps(piece, typed)
        if steps is not None:
            scores, n_steps = [step.score for step in steps if step.score is not None], len(steps)
        else:
            try:
                record, every, reason = rules.read_line(piece)
            except rules.RolloutError as error:
                raise located(path, start + position, error) from None
            if record is None:
                out.skip(reason, line)
                continue
            scores, n_steps = [score for score in every if score is not None], len(every)
        if not scores:
            out.skip(rules.NO_NUMERIC_SCORE, line)
            continue
        out.lines.append(line)
        out.offsets.append(start + position)
        out.lengths.append(len(piece))
        out.n_steps.append(n_steps)
        out.n_scored.append(len(scores))
        flat += scores
    out.n_lines = line + 1
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


def scan_shard(task: tuple[int, str, int, int]) -> ShardScan:
    """Score every line of bytes [start, end) of one file (a worker's unit of work); n_pos and sum_pos
    then come for all its lines at once, in Python's own `sum()` order (`scores.python_sum_rows`)."""
    file_index, path, start, end = task
    out = ShardScan(file_index, start)
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if end > start else b""
    utf8 = _is_utf8(memoryview(mapped)[start:end])
    plain = mapped.find(b"\r", start, end) == -1 and utf8
    values = _scan_plain_shard(mapped, start, end, out) if plain else None
    if values is None:
        out = ShardScan(file_index, start)
        values = _scan_lines(mapped[start:end], start, path, out, typed=utf8)
    offsets = np.concatenate([[0], np.cumsum(out.n_scored, dtype=np.int64)])
    stats = rollout_statistics(offsets, values, np.ones(len(values), dtype=bool))
    out.n_pos, out.sum_pos = stats["n_pos"], stats["sum_pos"]
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


def run_tasks(function: Any, tasks: Sequence[Any], num_proc: int | None) -> Any:
    """`map(function, tasks)`, in order, on a fork pool when there is more than one task and process."""
    processes = max(1, min(num_proc or os.cpu_count() or 1, len(tasks)))
    if processes == 1:
        yield from map(function, tasks)
        return
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as executor:
        try:
            yield from executor.map(function, tasks, chunksize=max(1, len(tasks) // (4 * processes)))
        finally:
            executor.shutdown(cancel_futures=True)


def _scan(files: Sequence[Path], shard_bytes: int, num_proc: int | None, progress: bool) -> list[ShardScan]:
    """`scan_shard` over every shard, the largest first; results in file order."""
    tasks = shard_tasks(files, shard_bytes)
    order = sorted(range(len(tasks)), key=lambda index: tasks[index][2] - tasks[index][3])
    results: list[Any] = [None] * len(tasks)
    total = sum(end - start for _, _, start, end in tasks)
    with progress_bar(progress, total=total, unit="B", unit_scale=True, desc="Scoring rollouts") as bar:
        for index, scan in zip(
            order, run_tasks(scan_shard, [tasks[i] for i in order], num_proc), strict=True
        ):
            results[index] = scan
            bar.update(tasks[index][3] - tasks[index][2])
    return results


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
    entropy_model: str | None = None  # what the entropy column was computed with

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def sources(self) -> list[str]:
        return [path.stem for path in self.files]

    def column(self, name: str) -> np.ndarray:
        return column_numpy(self.table, name)

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

    def chunks(self, rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """`rows` (in output order) cut into (file, rows) runs of at most CHUNK_ROWS rows of one file."""
        rows = np.asarray(rows, dtype=np.int64)
        file_of = self.column("file")[rows]
        starts = np.flatnonzero(np.diff(file_of, prepend=-1))  # where each run of one file begins
        return [
            (int(file_of[start]), piece)
            for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), len(rows)], strict=True)
            for piece in np.array_split(rows[start:stop], -(-(stop - start) // CHUNK_ROWS))
        ]

    def rollouts(self, file: int, rows: np.ndarray) -> list[rules.Rollout | rules.Drop]:
        """Rows of one file read again by byte span, through the conversion rule."""
        return read_rollouts(self.files[file], self.column("offset")[rows], self.column("length")[rows])


def read_rollouts(
    path: str | os.PathLike, offsets: np.ndarray, lengths: np.ndarray
) -> list[rules.Rollout | rules.Drop]:
    """`rules.read_rollouts`, with the file and line of a line the reference cannot convert."""
    offsets, lengths = offsets.tolist(), lengths.tolist()
    try:
        return rules.read_rollouts(path, offsets, lengths)
    except rules.RolloutError:  # find the line, for the message
        for offset, length in zip(offsets, lengths, strict=True):
            try:
                rules.read_rollouts(path, [offset], [length])
            except rules.RolloutError as error:
                raise located(path, offset, error) from None
        raise


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
    for file_counts in counts:  # the first few of each reason over all of the file's shards
        seen: dict[str, int] = {}
        examples = []
        for reason, line in file_counts.examples:
            seen[reason] = seen.get(reason, 0) + 1
            if seen[reason] <= EXAMPLES_PER_REASON:
                examples.append((reason, line))
        file_counts.examples = examples
    return batches, counts


# ------------------------------------------------------------------------------------------- entropy
@dataclass(frozen=True)
class EntropySource:
    """Which PRM gives the entropy column, and how it reads the rollouts (docs/selection.md#entropy)."""

    model: str
    step_format: str = "prm-token"
    batch_size: int = 8

    def key(self) -> str:
        from mprm_hf.fileio import model_fingerprint

        return f"{model_fingerprint(self.model)}:{self.step_format}"


def _entropy_column(table: ScoreTable, source: EntropySource, progress: bool) -> np.ndarray:
    """Mean step entropy of every row under `source.model` (NaN where the conversion rule drops the
    rollout): one scoring pass through the training input builder."""
    from mprm_hf.modeling import load_model_and_processor
    from mprm_hf.scoring import score_traces

    root = str(table.files[0].parent.parent)
    traces, positions = [], []
    for file, rows in table.chunks(np.arange(len(table))):
        for row, rollout in zip(rows.tolist(), table.rollouts(file, rows), strict=True):
            if isinstance(rollout, rules.Rollout) and rules.stepwise_problem(rollout) is None:
                record = rules.stepwise_record(rollout, id="", source="", image_root=root, threshold=0.0)
                traces.append(
                    {"question": rollout.question, "steps": rollout.texts, "images": record["images"]}
                )
                positions.append(row)
    entropy = np.full(len(table), np.nan)
    if traces:
        model, processor = load_model_and_processor(source.model)
        probabilities = score_traces(
            model,
            processor,
            traces,
            batch_size=source.batch_size,
            step_format=source.step_format,
            progress=progress,
        )
        entropy[np.asarray(positions)] = mean_step_entropy(probabilities)
    return entropy


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
    entropy_model = table.schema.metadata.get(b"mprm_hf.entropy_model", b"").decode() or None
    return ScoreTable(files, table.replace_schema_metadata(None), counts, True, path, entropy_model)


def _store(
    folder: Path, key: str, table: pa.Table, counts: list[ScanCounts], entropy_model: str | None
) -> Path:
    """Write the table atomically (a unique temporary beside it, then a rename) and prune the corpus's
    stale tables."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"mprm_hf.counts": json.dumps([vars(count) for count in counts])}
    if entropy_model:
        meta["mprm_hf.entropy_model"] = entropy_model
    target = folder / f"{key}.arrow"
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
    try:
        os.close(descriptor)
        with (
            pa.OSFile(temporary, "wb") as sink,
            pa.ipc.new_stream(sink, table.schema.with_metadata(meta)) as out,
        ):
            out.write_table(table)
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
    entropy: EntropySource | None = None,
) -> ScoreTable:
    """The score table of the `*.jsonl` files in `annotations_dir`: from the cache when the files are
    unchanged, else scanned (on `num_proc` processes, default all cores) and cached. With `entropy`, the
    table has an `entropy` column under that PRM (from the cache when it was computed with it)."""
    folder = Path(annotations_dir)
    files = annotation_files(folder)
    key = _fingerprint(files)
    cache = _corpus_folder(folder, cache_dir) if use_cache else None
    result = (
        _read_cached(cache / f"{key}.arrow", files) if cache and (cache / f"{key}.arrow").exists() else None
    )
    from_cache = result is not None
    if result is None:
        batches, counts = _assemble(files, _scan(files, shard_bytes, num_proc, progress))
        result = ScoreTable(files, pa.Table.from_batches(batches, schema=SCORE_TABLE_SCHEMA), counts)
    wanted = entropy.key() if entropy is not None else None
    if wanted is not None and result.entropy_model != wanted:
        table = result.table.drop_columns(
            [name for name in result.table.column_names if name == ENTROPY.name]
        )
        column = _arrow(_entropy_column(result, entropy, progress), ENTROPY.type)  # type: ignore[arg-type]
        result = ScoreTable(files, table.append_column(ENTROPY, column), result.counts, entropy_model=wanted)
    if cache is None or result.cached:
        return result
    stored = _read_cached(_store(cache, key, result.table, result.counts, result.entropy_model), files)
    assert stored is not None
    stored.cached = from_cache
    return stored
