"""Load VisualPRM400K-v1.1-Raw (docs/definitions.md#corpus-records) into a typed `datasets.Dataset`, reporting every defect.

The corpus is 38 jsonl files, one per source (the file stem; records carry no source field), 565,149
rollouts in all. Lines are parsed with orjson and written to Arrow by a datasets builder cached under
a fingerprint of the files' names, sizes and mtimes, so the second load of an unchanged corpus is a
memory-mapped cache hit. Files are split across `num_proc` processes.

Nothing is dropped silently. A line that cannot become a rollout (unparseable, blank, not an object,
no `steps_with_score`) is *skipped*; a rollout with a defect that the selection and conversion steps
must see (empty step text, missing or non-numeric score, missing image) is *kept*, with null /
empty values, because the reference ranks such rollouts and only drops them at conversion. Both kinds
are counted by reason with file and line in the returned `LoadReport`, whose per-file parts are cached
beside the Arrow files so that a warm load reports exactly what the cold one did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets.builder import Key

from mprm_hf.data import rollout as rules
from mprm_hf.data.locate import (
    ANNOTATIONS_DIR,
    HUB_ANNOTATION_PATTERNS,
    annotations_root,
    locate_dataset,
    mprm_cache_dir,
    unpack_archive,
)
from mprm_hf.data.report import LoadReport
from mprm_hf.errors import MPRMError

logger = logging.getLogger(__name__)

HUB_REPO = "OpenGVLab/VisualPRM400K-v1.1-Raw"
IMAGES_DIR = "VisualPRM400K-v1.1-Raw"
# Bump when parsing rules change, so old Arrow caches are not reused.
_FORMAT_VERSION = "1"

VISUALPRM400K_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "line": datasets.Value("int64"),
        "image": datasets.List(datasets.Value("string")),
        "image_root": datasets.Value("string"),
        "question": datasets.Value("string"),
        "question_orig": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "response": datasets.Value("string"),
        "steps": datasets.List(datasets.Value("string")),
        "mc_scores": datasets.List(datasets.Value("float64")),
        "num_mc_correct": datasets.List(datasets.Value("int64")),
        "num_mc_total": datasets.List(datasets.Value("int64")),
        "num_mc_sequences": datasets.Value("int64"),
    }
)

# Reasons, worded for the report table.
UNPARSEABLE = "unparseable JSON line"
BLANK = rules.BLANK
NOT_OBJECT = rules.NOT_OBJECT
MISSING_STEPS = "missing field 'steps_with_score'"
STEPS_NOT_LIST = rules.STEPS_NOT_LIST
EMPTY_STEPS = "empty 'steps_with_score'"
NON_STANDARD_JSON = rules.NON_STANDARD_JSON
BOM = "UTF-8 byte-order mark before the record (the reference cannot parse it)"
MISSING_FIELD = "missing field (default used)"
WRONG_TYPE = "wrong type (converted)"
STEP_NOT_OBJECT = rules.STEP_NOT_OBJECT
EMPTY_STEP_TEXT = rules.EMPTY_STEP_TEXT
MISSING_SCORE = "missing score (null)"
NON_NUMERIC_SCORE = "non-numeric score (null)"
TEXT_SCORE = "score given as text or boolean (converted)"
SCORE_OUT_OF_RANGE = "score outside [0, 1]"
EMPTY_IMAGE = "empty image"
IMAGE_MISSING = "image file missing"
UNSTORABLE = "value Arrow cannot store (e.g. integer beyond int64)"
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeEncodeError)

_TEXT_FIELDS = ("question", "question_orig", "answer", "response")


def load_visualprm400k(
    path_or_repo: str | Path = HUB_REPO,
    *,
    sources: Sequence[str] | None = None,
    with_images: bool = False,
    revision: str | None = None,
    num_proc: int | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[datasets.Dataset, LoadReport]:
    """Load the rollouts of `path_or_repo` (a local folder or a Hub dataset id).

    `sources` restricts to some annotation files (by stem). `with_images` downloads the images too
    (Hub) and checks that every image exists (local images are checked whenever they are present).
    `cache_dir` overrides the datasets cache that holds the Arrow files and the reports.
    """
    folder = locate_dataset(
        path_or_repo,
        allow_patterns=None if with_images else HUB_ANNOTATION_PATTERNS,
        revision=revision,
        what="VisualPRM400K annotations",
    )
    root = annotations_root(folder, cache_dir)
    image_root = _image_root(folder, root, with_images, cache_dir)
    files = _select_files(root, sources)
    check_images = "always" if with_images else "if-present"
    fingerprint = _fingerprint(root, image_root, files, check_images)
    report_dir = mprm_cache_dir(cache_dir) / "reports" / f"visualprm400k-{fingerprint}"
    report_dir.mkdir(parents=True, exist_ok=True)
    gen_kwargs = {
        "files": [str(f) for f in files],
        "root": str(root),
        "image_root": str(image_root),
        "report_dir": str(report_dir),
        "check_images": check_images,
    }
    procs = min(num_proc, len(files)) if num_proc and num_proc > 1 else None
    builder = _RolloutBuilder(
        cache_dir=str(cache_dir) if cache_dir else None,
        dataset_name="visualprm400k",
        config_id=f"default-fingerprint={fingerprint}",
        gen_kwargs=gen_kwargs,
    )
    builder.download_and_prepare(num_proc=procs)
    parts = [report_dir / f"{f.stem}.json" for f in files]
    if not all(p.exists() for p in parts):
        # The Arrow cache outlived its reports (e.g. a cleaned cache folder): regenerate both.
        builder.download_and_prepare(num_proc=procs, download_mode=datasets.DownloadMode.FORCE_REDOWNLOAD)
    report = LoadReport(name=f"VisualPRM400K {root}")
    for part in parts:
        report.merge(LoadReport.load(part))
    report.log(logger)
    if report.records_kept == 0:
        raise MPRMError(
            f"{root / ANNOTATIONS_DIR}: {report.fatal(f'no usable rollout in {len(files)} file(s)')}"
        )
    return builder.as_dataset(split=datasets.Split.TRAIN), report


def _image_root(folder: Path, root: Path, with_images: bool, cache_dir: str | Path | None) -> Path:
    """Image paths are relative to the annotations' parent, unless the images only come as images.zip."""
    archive = folder / "images.zip"
    if (root / IMAGES_DIR).is_dir() or not (with_images and archive.is_file()):
        return root
    unpacked = unpack_archive(archive, cache_dir)
    for candidate in [unpacked, *sorted(p for p in unpacked.iterdir() if p.is_dir())]:
        if (candidate / IMAGES_DIR).is_dir():
            return candidate
    return unpacked


def _select_files(root: Path, sources: Sequence[str] | None) -> list[Path]:
    """Annotation files in sorted file-name order (the order the reference ranks them in)."""
    files = sorted((root / ANNOTATIONS_DIR).glob("*.jsonl"))
    if not files:
        raise MPRMError(f"{root / ANNOTATIONS_DIR}: no *.jsonl annotation files")
    if sources is None:
        return files
    by_stem = {f.stem: f for f in files}
    unknown = [s for s in sources if s not in by_stem]
    if unknown:
        raise MPRMError(
            f"{root / ANNOTATIONS_DIR}: unknown source(s) {', '.join(unknown)}; "
            f"available: {', '.join(sorted(by_stem))}"
        )
    return [by_stem[s] for s in sorted(set(sources))]


def _fingerprint(root: Path, image_root: Path, files: list[Path], check_images: str) -> str:
    """Changes whenever a file changes (size or mtime), or images appear or disappear beside them."""
    state = {
        "version": _FORMAT_VERSION,
        "root": str(root),
        "image_root": str(image_root),
        "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files],
        "check_images": check_images,
        "image_dirs": sorted(
            p.name for p in image_root.iterdir() if p.is_dir() and p.name != ANNOTATIONS_DIR
        ),
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class _RolloutConfig(datasets.BuilderConfig):
    gen_kwargs: dict[str, Any] | None = None


class _RolloutBuilder(datasets.ArrowBasedBuilder):
    """Writes Arrow tables of parsed rows directly.

    `Dataset.from_generator` encodes every example through `Features.encode_example`, which costs
    ten times what building each batch's table with `pa.Table.from_pylist` does; the caching,
    `num_proc` sharding over `files` and the progress bar are the same builder machinery.
    """

    BUILDER_CONFIG_CLASS = _RolloutConfig

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(features=VISUALPRM400K_FEATURES)

    def _split_generators(self, dl_manager: Any) -> list[datasets.SplitGenerator]:
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs=self.config.gen_kwargs)]

    def _generate_tables(self, **gen_kwargs: Any) -> Iterator[tuple[Key, pa.Table]]:
        for file_index, table_index, table in _rollout_tables(**gen_kwargs):
            yield Key(file_index, table_index), table


def _rollout_tables(
    files: list[str], root: str, image_root: str, report_dir: str, check_images: str, batch_size: int = 4096
) -> Iterator[tuple[int, int, pa.Table]]:
    """One file at a time, in batches of rows; each file's report is saved when the file is done."""
    schema = VISUALPRM400K_FEATURES.arrow_schema
    for file_index, file in enumerate(files):
        path = Path(file)
        parser = RolloutParser(
            file_label=str(path.relative_to(root)),
            source=path.stem,
            image_root=Path(image_root),
            check_images=check_images,
        )
        rows: list[dict[str, Any]] = []
        table_index = 0
        for line_number, (_, raw) in enumerate(rules.split_lines(path.read_bytes()), start=1):
            row = parser.parse_line(raw, line_number)
            if row is not None:
                rows.append(row)
            if len(rows) == batch_size:
                yield file_index, table_index, parser.to_table(rows, schema)
                rows, table_index = [], table_index + 1
        if rows:
            yield file_index, table_index, parser.to_table(rows, schema)
        parser.report.save(Path(report_dir) / f"{path.stem}.json")


class RolloutParser:
    """Turns the lines of one annotation file into rows, recording every defect in `self.report`.

    Lines are read by the one rollout reader (`mprm_hf.data.rollout.read_line`, the reference's rules):
    a line it does not rank as JSON, or one the reference cannot read (a record that is not an object,
    a step that is not an object, a score beyond float range), is skipped with its reason. A record
    keeps its defects as null or empty values (converted to the columns' types, and reported), so that
    `select` ranks and `to_stepwise` drops it as the reference does."""

    def __init__(self, *, file_label: str, source: str, image_root: Path, check_images: str = "if-present"):
        self.file_label = file_label
        self.source = source
        self.image_root = image_root
        self.image_root_text = str(image_root)
        self.check_images = check_images
        self.report = LoadReport(name=file_label)
        self._dir_present: dict[str, bool] = {}

    def _flag(self, line: int, field: str, reason: str, detail: Any = "", action: str = "kept") -> None:
        self.report.add(self.file_label, line, field, reason, action=action, detail=str(detail))

    def to_table(self, rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
        """The batch as Arrow; a row Arrow refuses is found, reported and skipped, never a crash."""
        try:
            return pa.Table.from_pylist(rows, schema=schema)
        except _ARROW_ERRORS:
            pass
        storable = []
        for row in rows:
            try:
                pa.Table.from_pylist([row], schema=schema)
            except _ARROW_ERRORS as err:
                self._flag(row["line"], "", UNSTORABLE, err, action="skipped")
                self.report.records_kept -= 1
                continue
            storable.append(row)
        return pa.Table.from_pylist(storable, schema=schema)

    def parse_line(self, raw: bytes, line: int) -> dict[str, Any] | None:
        """One row for a usable line, None (reported as skipped) for anything else."""
        if not raw.strip():
            self._flag(line, "", BLANK, action="skipped")
            return None
        self.report.records_read += 1
        try:
            record, scores, note = rules.read_line(raw)
        except rules.RolloutError as error:
            self._flag(line, error.field, error.reason, error.detail or error, action="skipped")
            return None
        if record is None:
            bom = raw.lstrip().startswith(b"\xef\xbb\xbf")
            self._flag(
                line, "", BOM if bom else UNPARSEABLE if note == rules.NOT_JSON else note, action="skipped"
            )
            return None
        if note:
            self._flag(line, "", note)
        if "steps_with_score" not in record:
            self._flag(line, "steps_with_score", MISSING_STEPS, action="skipped")
            return None
        raw_steps = record["steps_with_score"]
        if not isinstance(raw_steps, list):  # a falsy value; any other is the reader's error
            self._flag(line, "steps_with_score", STEPS_NOT_LIST, type(raw_steps).__name__, action="skipped")
            return None
        if not raw_steps:
            self._flag(line, "steps_with_score", EMPTY_STEPS, action="skipped")
            return None
        row = self._fields(record, line)
        self._steps(raw_steps, scores, line, row)
        self.report.records_kept += 1
        return row

    def _fields(self, record: dict[str, Any], line: int) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": f"{self.source}:{line}",
            "source": self.source,
            "line": line,
            "image": self._images(record, line),
            "image_root": self.image_root_text,
        }
        for name in _TEXT_FIELDS:
            row[name] = self._text(record, name, line)
        sequences = record.get("num_mc_sequences")
        row["num_mc_sequences"] = self._int(sequences, line, "num_mc_sequences")
        return row

    def _text(self, record: dict[str, Any], name: str, line: int) -> str:
        """The text as written; a value that is not text as `str()` makes it (a false one as "", which
        the question rule, `question_orig or question`, reads the same way)."""
        value = record.get(name)
        if isinstance(value, str):
            return value
        if value is None:
            self._flag(line, name, MISSING_FIELD, "null" if name in record else "absent")
            return ""
        self._flag(line, name, WRONG_TYPE, f"{type(value).__name__} {value!r}")
        return str(value) if value else ""

    def _int(self, value: Any, line: int, field: str) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if value is None:
            self._flag(line, field, MISSING_FIELD, "null")
        else:
            self._flag(line, field, WRONG_TYPE, f"{value!r} -> null")
        return None

    def _images(self, record: dict[str, Any], line: int) -> list[str]:
        """The image paths as written. An entry that is not a path is kept as "" (and reported): the
        conversion rule then drops the rollout, as it drops the record's own value."""
        value = record.get("image")
        if value is None:
            self._flag(line, "image", MISSING_FIELD, "null" if "image" in record else "absent")
            return []
        if isinstance(value, str):
            images = [value] if value else []
        elif isinstance(value, list):  # nlvr2 pairs
            images = [item if isinstance(item, str) else "" for item in value]
            if not all(images) and value:
                self._flag(line, "image", EMPTY_IMAGE, f"{images.count('')} entries that are not paths")
        else:
            self._flag(line, "image", WRONG_TYPE, f"{type(value).__name__} {value!r}")
            return [""] if value else []
        if not value:
            self._flag(line, "image", EMPTY_IMAGE)
        for index, image in enumerate(images):
            if image and self._should_check(image) and not (self.image_root / image).is_file():
                field = "image" if isinstance(value, str) else f"image[{index}]"
                self._flag(line, field, IMAGE_MISSING, image)
        return images

    def _should_check(self, image: str) -> bool:
        """Check always when images were asked for, else only when the image folder is present."""
        if self.check_images == "always":
            return True
        top = image.split("/", 1)[0]
        if top not in self._dir_present:
            self._dir_present[top] = (self.image_root / top).is_dir()
        return self._dir_present[top]

    def _steps(
        self, raw_steps: list[dict], scores: list[float | None], line: int, row: dict[str, Any]
    ) -> None:
        """Texts as written, the reader's numeric scores, and the MC counts, with every oddity reported."""
        texts: list[str] = []
        correct: list[int | None] = []
        total: list[int | None] = []
        for index, (step, score) in enumerate(zip(raw_steps, scores, strict=True)):
            text, value = step.get("step"), step.get("score")
            n_correct, n_total = step.get("num_mc_correct"), step.get("num_mc_total")
            if not (  # the well-formed step needs no further checks
                type(text) is str
                and text.strip()
                and type(value) in (float, int)
                and 0.0 <= value <= 1.0
                and type(n_correct) is int
                and type(n_total) is int
            ):
                where = f"steps_with_score[{index}]"
                text = self._step_text(step, line, where)
                self._check_score(value, score, "score" in step, line, f"{where}.score")
                n_correct = self._count(step, "num_mc_correct", line, where)
                n_total = self._count(step, "num_mc_total", line, where)
            texts.append(text)
            correct.append(n_correct)
            total.append(n_total)
        row["steps"] = texts
        row["mc_scores"] = scores
        row["num_mc_correct"] = correct
        row["num_mc_total"] = total

    def _step_text(self, step: dict[str, Any], line: int, where: str) -> str:
        text = step.get("step")
        if not isinstance(text, str):  # as the reference reads `step or ""`: a false value is empty text
            if text is not None:
                self._flag(line, f"{where}.step", WRONG_TYPE, f"{type(text).__name__} {text!r}")
            text = str(text) if text else ""
        if not text.strip():
            self._flag(line, f"{where}.step", EMPTY_STEP_TEXT, repr(text))
        return text

    def _check_score(self, value: Any, score: float | None, present: bool, line: int, field: str) -> None:
        """Report how the reader took a score that is not a plain number in [0, 1]."""
        if value is None:
            self._flag(line, field, MISSING_SCORE, "null" if present else "absent")
        elif score is None:
            self._flag(
                line,
                field,
                NON_NUMERIC_SCORE,
                f"{type(value).__name__} {value!r}" if not isinstance(value, str) else repr(value),
            )
        elif isinstance(value, (str, bool)):
            self._flag(line, field, TEXT_SCORE, repr(value))
        if score is not None and (not 0.0 <= score <= 1.0 or math.isnan(score)):
            self._flag(line, field, SCORE_OUT_OF_RANGE, repr(value))

    def _count(self, step: dict[str, Any], name: str, line: int, where: str) -> int | None:
        if name not in step:
            self._flag(line, f"{where}.{name}", MISSING_FIELD, "absent")
            return None
        return self._int(step[name], line, f"{where}.{name}")
