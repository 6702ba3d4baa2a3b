"""Best-of-N candidate pools: one record per question with K candidate reasoning traces, each graded.

A pool is a folder that is also a Hub dataset: `pool.jsonl`, the images it names (paths relative to the
folder), and a dataset card `README.md` whose `configs` point `datasets.load_dataset(<folder>)` at the
jsonl. One line:

```json
{"id": "ai2d_train_12k:3", "source": "ai2d_train_12k", "images": ["images/ai2d_train_12k/00003.png"],
 "question": "What colour is the circle?", "answer": "red",
 "candidates": [{"steps": ["...", "..."], "answer": "blue", "correct": false}, ...]}
```

`id` and `source` are optional (the line number and "all"); `answer` (the reference) and each
candidate's `answer` and `correct` are what best-of-N is graded by, and majority vote counts the
candidates' answers as written. The same reader checks `mprm-hf rerank`'s candidates files, which need no
grades: one definition of the record, two strictnesses.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mprm_hf.errors import MPRMError
from mprm_hf.fileio import write_text_atomic
from mprm_hf.hub_access import REPO_ID

POOL_FILE = "pool.jsonl"
CARD_FILE = "README.md"
DEFAULT_SOURCE = "all"
SKIP_NO_CANDIDATES = "no candidates"


@dataclass
class Pool:
    """A read pool: the jsonl file, its valid records (images as paths relative to its folder), and the
    questions skipped by reason."""

    path: Path
    records: list[dict[str, Any]]
    skipped: Counter = field(default_factory=Counter)

    @property
    def root(self) -> Path:
        return self.path.parent


def check_record(
    record: Any, where: str, root: Path, *, graded: bool, allow_empty: bool = False, candidates: bool = True
) -> dict[str, Any] | None:
    """A validated record (a single image path becomes a list), or None for a question without candidates
    when `allow_empty`; anything else wrong is an MPRMError naming `where` and the field. Without
    `candidates`, the question alone is read (question, images, answer) and candidates are not looked at."""
    if not isinstance(record, dict):
        raise MPRMError(f"{where}: a line must be a JSON object")
    if not isinstance(record.get("question"), str) or not record["question"].strip():
        raise MPRMError(f"{where}: field 'question' is missing or not a non-empty string")
    images = record.get("images", [])
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
        raise MPRMError(f"{where}: field 'images' must be a list of paths")
    for index, image in enumerate(images):
        if not (root / image).is_file():
            raise MPRMError(f"{where}: field 'images[{index}]': file not found ({image})")
    if graded and not isinstance(record.get("answer"), str):
        raise MPRMError(f"{where}: field 'answer' (the reference answer) is missing or not a string")
    if not candidates:
        return {**record, "images": images}
    options = record.get("candidates")
    if not isinstance(options, list):
        raise MPRMError(f"{where}: field 'candidates' must be a non-empty list")
    if not options:
        if allow_empty:
            return None
        raise MPRMError(f"{where}: field 'candidates' must be a non-empty list")
    for index, option in enumerate(options):
        name = f"candidates[{index}]"
        if not isinstance(option, dict):
            raise MPRMError(f"{where}: field '{name}' must be an object with 'steps'")
        steps = option.get("steps")
        if not isinstance(steps, list) or not steps:
            raise MPRMError(f"{where}: field '{name}.steps' must be a non-empty list")
        for step_index, step in enumerate(steps):
            if not isinstance(step, str) or not step.strip():
                raise MPRMError(f"{where}: field '{name}.steps[{step_index}]' is empty or not a string")
        if graded:
            if not isinstance(option.get("answer"), str):
                raise MPRMError(f"{where}: field '{name}.answer' is missing or not a string")
            if not isinstance(option.get("correct"), bool):
                raise MPRMError(f"{where}: field '{name}.correct' is missing or not true/false")
    return {**record, "images": images}


def read_records(
    path: str | Path,
    *,
    graded: bool,
    allow_empty: bool = False,
    candidates: bool = True,
    what: str = "candidates file",
) -> tuple[list[dict[str, Any]], Counter]:
    """Every record of a jsonl pool or candidates file, checked line by line; errors name file, line and
    field. Returns the records and the questions skipped, by reason."""
    path = Path(path)
    if not path.is_file():
        raise MPRMError(f"{path}: {what} not found")
    root = path.resolve().parent
    records: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    seen: dict[str, int] = {}
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise MPRMError(f"{where}: not valid UTF-8 ({error.reason} at byte {error.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise MPRMError(f"{where}: not valid JSON: {error.msg}") from error
            checked = check_record(
                record, where, root, graded=graded, allow_empty=allow_empty, candidates=candidates
            )
            if checked is None:
                skipped[SKIP_NO_CANDIDATES] += 1
                continue
            if graded:
                key = str(checked.get("id", f"line {number}"))
                if key in seen:
                    raise MPRMError(f"{where}: field 'id' repeats line {seen[key]} ({key!r})")
                seen[key] = number
                checked = {**checked, "id": key, "source": str(checked.get("source") or DEFAULT_SOURCE)}
            records.append(checked)
    if not records:
        raise MPRMError(f"{path}: no questions" + (f" (skipped: {_skips(skipped)})" if skipped else ""))
    return records, skipped


def _skips(skipped: Mapping[str, int]) -> str:
    return ", ".join(f"{count} with {reason}" for reason, count in sorted(skipped.items()))


def locate_pool(source: str | Path) -> Path:
    """The pool's jsonl file: a local file, `pool.jsonl` in a local folder, or a Hub dataset repo's
    snapshot (offline with no cached copy: one MPRMError line)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / POOL_FILE).is_file():
            raise MPRMError(f"{path}: no {POOL_FILE} in this folder (is it a best-of-N pool?)")
        return path / POOL_FILE
    text = str(source)
    if not REPO_ID.match(text) or text.startswith((".", "/", "~")):
        raise MPRMError(f"{text}: no such pool file or folder, and not a Hub dataset id (owner/name)")
    from mprm_hf.data.locate import locate_dataset

    folder = locate_dataset(text, allow_patterns=None, what="best-of-N pool")
    if not (folder / POOL_FILE).is_file():
        raise MPRMError(f"{text}: the dataset repo has no {POOL_FILE} (is it a best-of-N pool?)")
    return folder / POOL_FILE


def load_pool(source: str | Path, *, candidates: bool = True) -> Pool:
    """A pool from a local file or folder, or a Hub dataset id; questions without candidates are
    skipped and counted, every other fault is an error naming file, line and field. Without `candidates`,
    its questions alone (question, images, answer: what GRPO practises on), candidates or not."""
    path = locate_pool(source)
    records, skipped = read_records(
        path, graded=True, allow_empty=True, candidates=candidates, what="pool file"
    )
    return Pool(path, records, skipped)


def pool_card(records: Iterable[Mapping[str, Any]], *, pretty_name: str, made_by: str) -> str:
    """A dataset card that makes the folder loadable by `datasets.load_dataset` and says what it holds."""
    from huggingface_hub import DatasetCard, DatasetCardData

    records = list(records)
    per_source = Counter(record.get("source", DEFAULT_SOURCE) for record in records)
    candidates = [option for record in records for option in record["candidates"]]
    right = sum(option["correct"] for option in candidates)
    pass_at_k = sum(any(option["correct"] for option in record["candidates"]) for record in records)
    data = DatasetCardData(
        pretty_name=pretty_name,
        license="unknown",
        language=["en"],
        tags=["best-of-n", "process-reward-model", "mprm-hf"],
        task_categories=["image-text-to-text"],
        configs=[{"config_name": "default", "data_files": [{"split": "test", "path": POOL_FILE}]}],
    )
    rows = "\n".join(f"| {source} | {count} |" for source, count in sorted(per_source.items()))
    body = (
        f"# {pretty_name}\n\nA best-of-N candidate pool in the `mprm-hf` format (docs/bon.md): one record per "
        "question with its images, the reference answer and K candidate reasoning traces, each with its "
        "steps, final answer and correctness.\n\n"
        f"Made by: {made_by}\n\n"
        f"- questions: {len(records)}\n- candidates: {len(candidates)} "
        f"({right / max(len(candidates), 1):.1%} correct)\n"
        f"- questions with at least one correct candidate: {pass_at_k / max(len(records), 1):.1%}\n\n"
        "Score it with `mprm-hf bon --model PRM --pool <this folder or repo id> --out DIR`.\n\n"
        f"| source | questions |\n|---|---|\n{rows}\n"
    )
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def write_pool(
    folder: str | Path, records: Iterable[Mapping[str, Any]], *, pretty_name: str, made_by: str
) -> Path:
    """Write `pool.jsonl` and its card into `folder` (the images must be there already); each file atomically."""
    folder = Path(folder)
    records = list(records)
    write_text_atomic(
        folder / POOL_FILE, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    )
    write_text_atomic(folder / CARD_FILE, pool_card(records, pretty_name=pretty_name, made_by=made_by))
    return folder / POOL_FILE
