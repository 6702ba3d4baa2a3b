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
import orjson
import pyarrow as pa
from datasets.builder import Key

from mprm_hf.data.locate import locate_dataset, mprm_cache_dir, unpack_archive
from mprm_hf.data.report import LoadReport
from mprm_hf.errors import MPRMError

logger = logging.getLogger(__name__)

HUB_REPO = "OpenGVLab/VisualPRM400K-v1.1-Raw"
ANNOTATIONS_DIR = "annotations"
IMAGES_DIR = "VisualPRM400K-v1.1-Raw"
# The Hub repo ships annotations.zip; an unpacked mirror ships annotations/*.jsonl. Fetch either.
HUB_ANNOTATION_PATTERNS = ("annotations/*.jsonl", "annotations.zip", "README.md")
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
BLANK = "blank line"
NOT_OBJECT = "record is not a JSON object"
MISSING_STEPS = "missing field 'steps_with_score'"
STEPS_NOT_LIST = "'steps_with_score' is not a list"
EMPTY_STEPS = "empty 'steps_with_score'"
NON_STANDARD_JSON = "non-standard JSON (NaN/Infinity) accepted"
BOM = "UTF-8 byte-order mark before the record (the reference cannot parse it)"
MISSING_FIELD = "missing field (default used)"
WRONG_TYPE = "wrong type (converted)"
STEP_NOT_OBJECT = "step is not an object"
EMPTY_STEP_TEXT = "empty step text"
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
    root = _annotations_root(folder, cache_dir)
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
        first = f"; first problem: {report.examples[0]}" if report.examples else ""
        raise MPRMError(
            f"{root / ANNOTATIONS_DIR}: no usable rollout in {len(files)} file(s) "
            f"({report.total_issues} problems{first})"
        )
    return builder.as_dataset(split=datasets.Split.TRAIN), report


def _annotations_root(folder: Path, cache_dir: str | Path | None) -> Path:
    """The folder that holds `annotations/`: given directly, given as `annotations/` itself, or zipped."""
    if (folder / ANNOTATIONS_DIR).is_dir():
        return folder
    if folder.name == ANNOTATIONS_DIR and any(folder.glob("*.jsonl")):
        return folder.parent
    archive = folder / f"{ANNOTATIONS_DIR}.zip"
    if archive.is_file():
        unpacked = unpack_archive(archive, cache_dir)
        for candidate in [unpacked, *sorted(p for p in unpacked.iterdir() if p.is_dir())]:
            if (candidate / ANNOTATIONS_DIR).is_dir():
                return candidate
        raise MPRMError(f"{archive}: holds no '{ANNOTATIONS_DIR}/' folder")
    raise MPRMError(
        f"{folder}: no '{ANNOTATIONS_DIR}/' folder (nor {ANNOTATIONS_DIR}.zip) with *.jsonl files"
    )


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
        with path.open("rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
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
    """Parses the lines of one annotation file into rows, recording every defect in `self.report`."""

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
        record = self._decode(raw.rstrip(b"\r\n"), line)
        if record is None:
            return None
        if not isinstance(record, dict):
            self._flag(line, "", NOT_OBJECT, type(record).__name__, action="skipped")
            return None
        if "steps_with_score" not in record:
            self._flag(line, "steps_with_score", MISSING_STEPS, action="skipped")
            return None
        raw_steps = record["steps_with_score"]
        if not isinstance(raw_steps, list):
            self._flag(line, "steps_with_score", STEPS_NOT_LIST, type(raw_steps).__name__, action="skipped")
            return None
        if not raw_steps:
            self._flag(line, "steps_with_score", EMPTY_STEPS, action="skipped")
            return None
        row = self._fields(record, line)
        self._steps(raw_steps, line, row)
        self.report.records_kept += 1
        return row

    def _decode(self, raw: bytes, line: int) -> Any:
        if raw.lstrip().startswith(b"\xef\xbb\xbf"):
            self._flag(line, "", BOM, action="skipped")
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            strict_error = err
        # Python's json (which the reference uses) also reads NaN / Infinity; accept, but say so.
        try:
            record = json.loads(raw)
            orjson.dumps(record)  # rejects lone surrogates, which Arrow could not store
        except (ValueError, TypeError):
            self._flag(line, "", UNPARSEABLE, strict_error, action="skipped")
            return None
        self._flag(line, "", NON_STANDARD_JSON, strict_error)
        return record

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
        value = record.get(name)
        if isinstance(value, str):
            return value
        if value is None:
            self._flag(line, name, MISSING_FIELD, "null" if name in record else "absent")
            return ""
        self._flag(line, name, WRONG_TYPE, f"{type(value).__name__} {value!r}")
        return str(value)

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
        value = record.get("image")
        if value is None:
            self._flag(line, "image", MISSING_FIELD, "null" if "image" in record else "absent")
            return []
        if isinstance(value, str):
            images = [value] if value else []
        elif isinstance(value, list):  # nlvr2 pairs
            images = [v if isinstance(v, str) else str(v) for v in value if v not in ("", None)]
            if len(images) != len(value):
                self._flag(line, "image", EMPTY_IMAGE, f"{len(value) - len(images)} empty entries dropped")
        else:
            self._flag(line, "image", WRONG_TYPE, f"{type(value).__name__} -> []")
            return []
        if not value:
            self._flag(line, "image", EMPTY_IMAGE)
        for index, image in enumerate(images):
            if self._should_check(image) and not (self.image_root / image).is_file():
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

    def _steps(self, raw_steps: list[Any], line: int, row: dict[str, Any]) -> None:
        texts: list[str] = []
        scores: list[float | None] = []
        correct: list[int | None] = []
        total: list[int | None] = []
        for index, step in enumerate(raw_steps):
            if isinstance(step, dict):
                text, score = step.get("step"), step.get("score")
                n_correct, n_total = step.get("num_mc_correct"), step.get("num_mc_total")
                if (  # the well-formed step, read without further checks
                    type(text) is str
                    and text.strip()
                    and type(score) in (float, int)
                    and 0.0 <= score <= 1.0
                    and type(n_correct) is int
                    and type(n_total) is int
                ):
                    texts.append(text)
                    scores.append(float(score))
                    correct.append(n_correct)
                    total.append(n_total)
                    continue
            where = f"steps_with_score[{index}]"
            if not isinstance(step, dict):
                self._flag(line, where, STEP_NOT_OBJECT, f"{type(step).__name__} {step!r}")
                step = {}
            texts.append(self._step_text(step, line, where))
            scores.append(self._score(step, line, f"{where}.score"))
            correct.append(self._count(step, "num_mc_correct", line, where))
            total.append(self._count(step, "num_mc_total", line, where))
        row["steps"] = texts
        row["mc_scores"] = scores
        row["num_mc_correct"] = correct
        row["num_mc_total"] = total

    def _step_text(self, step: dict[str, Any], line: int, where: str) -> str:
        text = step.get("step")
        if not isinstance(text, str):
            if text is not None:
                self._flag(line, f"{where}.step", WRONG_TYPE, f"{type(text).__name__} {text!r}")
            text = "" if text is None else str(text)
        if not text.strip():
            self._flag(line, f"{where}.step", EMPTY_STEP_TEXT, repr(text))
        return text

    def _score(self, step: dict[str, Any], line: int, field: str) -> float | None:
        """Python's float() semantics (the reference's), with anything beyond plain numbers reported."""
        value = step.get("score")
        if value is None:
            self._flag(line, field, MISSING_SCORE, "null" if "score" in step else "absent")
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            score = float(value)
        elif isinstance(value, (str, bool)):
            try:
                score = float(value)
            except ValueError:
                self._flag(line, field, NON_NUMERIC_SCORE, repr(value))
                return None
            self._flag(line, field, TEXT_SCORE, repr(value))
        else:
            self._flag(line, field, NON_NUMERIC_SCORE, f"{type(value).__name__} {value!r}")
            return None
        if not 0.0 <= score <= 1.0 or math.isnan(score):
            self._flag(line, field, SCORE_OUT_OF_RANGE, repr(value))
        return score

    def _count(self, step: dict[str, Any], name: str, line: int, where: str) -> int | None:
        if name not in step:
            self._flag(line, f"{where}.{name}", MISSING_FIELD, "absent")
            return None
        return self._int(step[name], line, f"{where}.{name}")
