"""One path for every selector and every output format: scan -> score table -> selector -> kept rows
-> writer (docs/selection.md).

    from mprm_hf.selection import build_subset
    result = build_subset("VisualPRM400K-v1.1-Raw", "bis10.parquet", method="bis", alpha=0.2,
                          top_ratio=0.1, fmt="parquet")

The scan is cached (`scan.scan_corpus`), so a new alpha, ratio, method or format reads only the kept
lines. `--format reference` is one writer among the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mprm_hf.data.locate import ANNOTATIONS_DIR
from mprm_hf.data.rollout import DROP_REASONS
from mprm_hf.errors import MPRMError
from mprm_hf.selection import scores as scoring
from mprm_hf.selection.provenance import selection_path, selection_record, write_selection
from mprm_hf.selection.report import SelectionReport, SourceRow
from mprm_hf.selection.scan import EXAMPLES_PER_REASON, SHARD_BYTES, EntropySource, ScoreTable, scan_corpus
from mprm_hf.selection.selectors import Selection, columns_of, select_rows, selector_for
from mprm_hf.selection.writers import WriteResult, write_subset


def resolve_annotations(path_or_repo: str | os.PathLike, revision: str | None = None) -> Path:
    """The folder of `*.jsonl` annotation files: given directly, the corpus root that holds
    `annotations/`, an `annotations.zip` beside it, or a Hub dataset id (fetched, or from the cache)."""
    folder = Path(path_or_repo)
    if folder.is_dir() and (folder / ANNOTATIONS_DIR).is_dir():
        return folder / ANNOTATIONS_DIR
    if folder.is_dir() and not (folder / f"{ANNOTATIONS_DIR}.zip").is_file():
        return folder  # the annotations folder itself (`scan_corpus` says so if it holds no *.jsonl)
    from mprm_hf.data.locate import HUB_ANNOTATION_PATTERNS, annotations_root, locate_dataset

    if not folder.exists():
        folder = locate_dataset(
            str(path_or_repo), allow_patterns=HUB_ANNOTATION_PATTERNS, revision=revision,
            what="VisualPRM400K annotations",
        )  # fmt: skip
    return annotations_root(folder, None) / ANNOTATIONS_DIR


def table_columns(table: ScoreTable) -> dict[str, np.ndarray]:
    """The selector columns of the score table (`entropy` too, when the table has it)."""
    columns = columns_of(
        table.column("file"), table.column("n_scored"), table.column("n_pos"), table.column("sum_pos")
    )
    if "entropy" in table.table.column_names:
        columns["entropy"] = table.column("entropy")
    return columns


@dataclass
class SubsetResult:
    """What a run kept and wrote, per table row, with the report the terminal and the card show."""

    scores: ScoreTable
    selection: Selection
    written_rows: WriteResult
    output: Path
    fmt: str
    report: SelectionReport = field(repr=False)

    @property
    def files(self) -> list[Path]:
        return self.scores.files

    @property
    def cached(self) -> bool:
        return self.scores.cached

    @property
    def kept(self) -> np.ndarray:
        """Per table row: chosen by the selector."""
        mask = np.zeros(len(self.scores), dtype=bool)
        mask[self.selection.rows] = True
        return mask

    @property
    def written(self) -> np.ndarray:
        """Per table row: chosen and converted (in the output)."""
        mask = np.zeros(len(self.scores), dtype=bool)
        mask[self.selection.rows[self.written_rows.written]] = True
        return mask

    @property
    def n_written(self) -> int:
        return int(self.written_rows.written.sum())

    def written_ids(self) -> list[str]:
        """`source:line` of every written rollout, in output order (the stepwise records' ids)."""
        rows = self.selection.rows[self.written_rows.written]
        files, lines = self.scores.column("file")[rows], self.scores.column("line")[rows]
        return [
            f"{self.files[f].stem}:{line}" for f, line in zip(files.tolist(), lines.tolist(), strict=True)
        ]


def build_report(result_parts: tuple[ScoreTable, Selection, WriteResult]) -> SelectionReport:
    """Per-source rows, label balance and the skip / drop notes of one run: one definition for every
    format and selector."""
    table, selection, write = result_parts
    files = table.column("file")
    n_files = len(table.files)
    n_scored, n_pos = table.column("n_scored"), table.column("n_pos")
    rows = selection.rows
    written = rows[write.written]

    def per_file(mask_rows: np.ndarray | None = None, weights: np.ndarray | None = None) -> list[int]:
        chosen = files if mask_rows is None else files[mask_rows]
        return np.bincount(chosen, weights=weights, minlength=n_files).astype(np.int64).tolist()

    totals, kept, out = per_file(), per_file(rows), per_file(written)
    before_steps, before_pos = per_file(weights=n_scored), per_file(weights=n_pos)
    after_steps = per_file(written, n_scored[written])
    after_pos = per_file(written, write.positives[write.written])
    report_rows = [
        SourceRow(
            path.stem,
            totals[i],
            out[i],
            before_steps[i],
            before_pos[i],
            after_steps[i],
            after_pos[i],
            kept[i] - out[i],
        )  # fmt: skip
        for i, path in enumerate(table.files)
    ]
    notes = [f"skipped when scanning, {line}" for line in table.skipped_lines()]
    lines = table.column("line")
    failed = np.flatnonzero(~write.written)
    for reason in DROP_REASONS:
        dropped = failed[write.reasons[failed] == reason]
        if len(dropped):
            where = ", ".join(
                f"{table.files[files[rows[i]]].name}:{lines[rows[i]]}" for i in dropped[:EXAMPLES_PER_REASON]
            )
            more = ", ..." if len(dropped) > EXAMPLES_PER_REASON else ""
            notes.append(f"dropped at conversion, {reason}: {len(dropped)} ({where}{more})")
    alpha = float(selection.params.get("alpha", scoring.DEFAULT_ALPHA))
    kept_mask = np.zeros(len(table), dtype=bool)
    kept_mask[written] = True
    return SelectionReport(
        selector=selection.method,
        params={key: value for key, value in selection.params.items() if value is not None},
        rows=report_rows,
        n_scored=n_scored,
        n_pos=n_pos,
        sum_pos=table.column("sum_pos"),
        bis_alpha=alpha,
        kept_mask=kept_mask,
        order_note=selection.order_note,
        notes=notes,
    )


def build_subset(
    annotations: str | os.PathLike,
    output: str | os.PathLike,
    *,
    method: str = "bis",
    fmt: str = "jsonl",
    top_ratio: float | None = None,
    budget: int | None = None,
    threshold: float = 0.0,
    allow_outside_images: bool = False,
    num_proc: int | None = None,
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    progress: bool = True,
    shard_bytes: int = SHARD_BYTES,
    **params: Any,
) -> SubsetResult:
    """Scan (or read the cached scan of) `annotations`, select with `method` at the budget, and write
    the kept rollouts to `output` in `fmt` (jsonl, parquet, arrow or reference)."""
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise MPRMError(f"--num-proc must be a positive number of processes, got {num_proc!r}")
    folder = resolve_annotations(annotations, revision)
    output = Path(output)
    if fmt == "reference":
        if method != "bis":
            raise MPRMError(
                f"--format reference reproduces the reference's BIS selection; --method {method} has no reference output"
            )
        if budget is not None or top_ratio is None:
            raise MPRMError("--format reference needs --top-ratio (the reference has no global budget)")
    selector_for(method, top_ratio=top_ratio, budget=budget, **params)  # refused before any work
    entropy = None
    if method == "entropy" and params.get("model"):
        entropy = EntropySource(
            str(params["model"]), params.get("step_format") or "prm-token", int(params.get("batch_size") or 8)
        )
    table = scan_corpus(
        folder, num_proc=num_proc, use_cache=use_cache, cache_dir=cache_dir, progress=progress,
        shard_bytes=shard_bytes, entropy=entropy,
    )  # fmt: skip
    if output.resolve() in {path.resolve() for path in table.files}:
        raise MPRMError(
            f"{output}: is one of the annotation files being selected from; choose another --output"
        )
    selection = select_rows(table_columns(table), method, top_ratio=top_ratio, budget=budget, **params)
    write = write_subset(
        table, selection.rows, output, fmt=fmt, threshold=threshold, image_root=str(folder.parent),
        allow_outside_images=allow_outside_images, num_proc=num_proc, progress=progress,
    )  # fmt: skip
    if fmt != "reference":
        selection.params["threshold"] = threshold
    else:
        selection.params["format"] = "reference"
    result = SubsetResult(table, selection, write, output, fmt, build_report((table, selection, write)))
    write_selection(selection_path(output), selection_record(result, corpus=annotations, revision=revision))
    return result


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
) -> SubsetResult:
    """Write the reference's BIS subset of `annotations_dir` to `output`: the same bytes as
    `build_bis_subset.py --alpha A --top-ratio R`."""
    if not (isinstance(top_ratio, (int, float)) and 0.0 < top_ratio <= 1.0):
        raise MPRMError(f"--top-ratio must be in (0, 1], got {top_ratio!r}")
    return build_subset(
        annotations_dir, output, method="bis", fmt="reference", alpha=alpha, top_ratio=top_ratio,
        num_proc=num_proc, use_cache=use_cache, cache_dir=cache_dir, progress=progress, shard_bytes=shard_bytes,
    )  # fmt: skip
