"""Load VisualProcessBench (docs/definitions.md#benchmark-records): 2,866 human-labelled traces, labels 1 / 0 / -1 per step.

Local folder (`test.jsonl` + images) or Hub id (`OpenGVLab/VisualProcessBench`, which ships the images
as `images.zip`, unpacked once into the cache). Image paths become absolute paths under the benchmark
root. A question names its images with `<imageN>` tags; 25 real records name more tags than they
supply images, so each row carries `missing_images` and the report counts them. A record whose label
vector does not match its steps, or holds a label outside {1, 0, -1}, is skipped and reported with
file and line: scoring it would misalign every later step.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import datasets
import orjson

from mprm_hf.data.locate import locate_dataset, unpack_archive
from mprm_hf.data.report import LoadReport
from mprm_hf.errors import MPRMError

logger = logging.getLogger(__name__)

HUB_REPO = "OpenGVLab/VisualProcessBench"
LABELS = (1, 0, -1)
IMAGE_TAG = re.compile(r"<image\s*(\d+)>")

VISUALPROCESSBENCH_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "images": datasets.List(datasets.Value("string")),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "steps": datasets.List(datasets.Value("string")),
        "labels": datasets.List(datasets.Value("int64")),
        "policy_model": datasets.Value("string"),
        "data_source": datasets.Value("string"),
        "missing_images": datasets.Value("int64"),
        "line": datasets.Value("int64"),  # in the split's jsonl, for located messages
    }
)

# Reasons, worded for the report table.
UNPARSEABLE = "unparseable JSON line"
BLANK = "blank line"
NOT_OBJECT = "record is not a JSON object"
MISSING_FIELD = "missing required field"
WRONG_TYPE = "wrong type"
NO_STEPS = "no steps"
LENGTH_MISMATCH = "label count != step count"
BAD_LABEL = "label not in {1, 0, -1}"
MISSING_OPTIONAL = "missing field (default used)"
FEWER_IMAGES_THAN_TAGS = "fewer images than <imageN> tags"
IMAGE_MISSING = "image file missing"
EMPTY_STEP = "empty step text"
IMAGE_OUTSIDE = "image path outside the benchmark folder"


def load_visualprocessbench(
    path_or_repo: str | Path = HUB_REPO,
    *,
    split: str = "test",
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    allow_outside_images: bool = False,
) -> tuple[datasets.Dataset, LoadReport]:
    """The benchmark as a typed Dataset (columns: VISUALPROCESSBENCH_FEATURES) and its load report.

    A record whose image path leaves the benchmark folder (`../../x.png`, `/etc/...`) is a reported,
    located skip unless `allow_outside_images`."""
    root = locate_dataset(path_or_repo, allow_patterns=None, revision=revision, what="VisualProcessBench")
    annotation = root / f"{split}.jsonl"
    if not annotation.is_file():
        raise MPRMError(f"{root}: no {split}.jsonl (VisualProcessBench split {split!r})")
    image_roots = [root]
    if (root / "images.zip").is_file():
        image_roots.append(unpack_archive(root / "images.zip", cache_dir))
    report = LoadReport(name=f"VisualProcessBench {annotation}")
    parser = _BenchParser(annotation.name, image_roots, report, allow_outside_images)
    rows = []
    with annotation.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            row = parser.parse_line(raw, line_number)
            if row is not None:
                rows.append(row)
    if not rows:
        raise MPRMError(f"{annotation}: {report.fatal('no usable record')}")
    ds = datasets.Dataset.from_list(rows, features=VISUALPROCESSBENCH_FEATURES)
    report.log(logger)
    return ds, report


def _inside(root: Path, path: Path) -> bool:
    """Whether `path` lies inside `root` as written: no absolute path, no `..` that climbs out (a
    symlinked images folder, as a copy of a benchmark may have, stays allowed)."""
    return Path(os.path.normpath(path)).is_relative_to(os.path.normpath(root))


class _BenchParser:
    def __init__(
        self, file_label: str, image_roots: list[Path], report: LoadReport, allow_outside: bool = False
    ):
        self.allow_outside = allow_outside
        self.file_label = file_label
        self.image_roots = image_roots
        self.report = report

    def _flag(self, line: int, field: str, reason: str, detail: Any = "", action: str = "skipped") -> None:
        self.report.add(self.file_label, line, field, reason, action=action, detail=str(detail))

    def parse_line(self, raw: bytes, line: int) -> dict[str, Any] | None:
        if not raw.strip():
            self._flag(line, "", BLANK)
            return None
        self.report.records_read += 1
        try:
            record = orjson.loads(raw.rstrip(b"\r\n"))
        except orjson.JSONDecodeError as err:
            self._flag(line, "", UNPARSEABLE, err)
            return None
        if not isinstance(record, dict):
            self._flag(line, "", NOT_OBJECT, type(record).__name__)
            return None
        response = record.get("response")
        if not isinstance(response, dict):
            reason = MISSING_FIELD if response is None else WRONG_TYPE
            self._flag(line, "response", reason, type(response).__name__)
            return None
        steps, labels = response.get("steps"), response.get("process_correctness")
        for field, value in (("response.steps", steps), ("response.process_correctness", labels)):
            if not isinstance(value, list):
                self._flag(line, field, MISSING_FIELD if value is None else WRONG_TYPE, type(value).__name__)
                return None
        if not steps:
            self._flag(line, "response.steps", NO_STEPS)
            return None
        if len(labels) != len(steps):
            self._flag(
                line, "response.process_correctness", LENGTH_MISMATCH, f"{len(labels)} vs {len(steps)}"
            )
            return None
        for index, label in enumerate(labels):
            if isinstance(label, bool) or label not in LABELS:
                self._flag(line, f"response.process_correctness[{index}]", BAD_LABEL, repr(label))
                return None
        for index, step in enumerate(steps):
            if not isinstance(step, str):
                self._flag(line, f"response.steps[{index}]", WRONG_TYPE, type(step).__name__)
                return None
            if not step.strip():
                self._flag(line, f"response.steps[{index}]", EMPTY_STEP, repr(step))
                return None
        texts = {
            name: self._text(record, name, line)
            for name in ("question", "answer", "policy_model", "data_source")
        }
        images = self._images(record, line)
        if images is None:
            return None
        tags = {int(n) for n in IMAGE_TAG.findall(texts["question"])}
        missing = sum(1 for number in tags if number > len(images))
        if missing:
            self._flag(
                line, "image", FEWER_IMAGES_THAN_TAGS, f"{len(tags)} tags, {len(images)} images", "kept"
            )
        self.report.records_kept += 1
        return {
            "id": str(record.get("id", f"{self.file_label}:{line}")),
            "images": images,
            "question": texts["question"],
            "answer": texts["answer"],
            "steps": steps,
            "labels": [int(label) for label in labels],
            "policy_model": texts["policy_model"],
            "data_source": texts["data_source"],
            "missing_images": missing,
            "line": line,
        }

    def _text(self, record: dict[str, Any], name: str, line: int) -> str:
        value = record.get(name)
        if isinstance(value, str):
            return value
        if value is None:
            self._flag(line, name, MISSING_OPTIONAL, "absent", "kept")
            return ""
        self._flag(line, name, WRONG_TYPE, f"{type(value).__name__} {value!r} (converted)", "kept")
        return str(value)

    def _images(self, record: dict[str, Any], line: int) -> list[str] | None:
        value = record.get("image", record.get("images"))
        if value is None:
            self._flag(line, "image", MISSING_OPTIONAL, "absent", "kept")
            return []
        paths = [value] if isinstance(value, str) else list(value) if isinstance(value, list) else []
        resolved = []
        for index, image in enumerate(p for p in paths if p):
            if not self.allow_outside and not any(_inside(root, root / image) for root in self.image_roots):
                self._flag(line, f"image[{index}]", IMAGE_OUTSIDE, image)  # skipped: never read /etc/...
                return None
            found = next((root / image for root in self.image_roots if (root / image).is_file()), None)
            if found is None:
                self._flag(line, f"image[{index}]", IMAGE_MISSING, image, "kept")
                found = self.image_roots[0] / image
            resolved.append(str(found.resolve()))
        return resolved
