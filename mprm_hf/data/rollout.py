"""One rollout line of VisualPRM400K (docs/definitions.md#corpus-records): how it is read and how it
is converted, each rule defined here once, as the reference (`build_bis_subset.py`) applies it.

Every path calls these functions: the selection scan and writers (`mprm_hf.selection`), the `datasets`
builder behind `load_visualprm400k`, and `to_stepwise`.

Reading (`read_line`): a line is stripped as `str.strip()` strips it and parsed as `json.loads` parses
it (so `NaN`, `Infinity` and lone surrogate escapes are read, a BOM or a truncated line is not); a
score is *numeric* when it is not null and `float(score)` accepts it (ints, floats, booleans, numeric
strings such as `"0.5"` or `"nan"`). A line the reference would crash on (JSON that is not an object,
`steps_with_score` that is not a list of objects, a score beyond float range, bytes that are not UTF-8)
raises `RolloutError`, which names the field; callers add the file and line. orjson reads the common
line (~3x `json`'s speed) and `json` whatever orjson refuses or may have widened (an integer beyond 64
bits, which orjson turns into a float).

Conversion (`to_rollout`): a rollout is dropped, never trimmed, when its image is empty, it has no
steps, or a step (in order) has empty text or a non-numeric score; the question is `question_orig`,
else `question`, else `""`, passed through `str()` and stripped; step texts are stripped. Stepwise
records add two drops of their own (`stepwise_problem`): a non-finite score, which no soft label can be
trained on, and an image that is not a file path inside the corpus folder.

`decode_score_lines` and `read_rollouts` are the same rules for many lines at once: one typed `msgspec`
call where every line has the common shape (it rejects every JSON text `json.loads` rejects, parses
floats as `float()` does and keeps the last of duplicate keys), and the functions above for any line it
refuses. Tests check that both routes give the same values on every edge case.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring  # the string encoder json.dumps(ensure_ascii=False) uses
from typing import Any, NamedTuple

import msgspec
import orjson

from mprm_hf.errors import MPRMError

# Why a line is not ranked
BLANK = "blank line"
NOT_JSON = "not JSON"
NO_NUMERIC_SCORE = "no numeric score"
NON_STANDARD_JSON = "non-standard JSON (NaN, Infinity, lone surrogates) accepted"
# Why the reference cannot read a line (RolloutError.reason)
NOT_OBJECT = "record is not a JSON object"
STEPS_NOT_LIST = "'steps_with_score' is not a list"
STEP_NOT_OBJECT = "step is not an object"
UNREADABLE = "cannot be read as the reference reads it"
# Why a rollout is dropped at conversion
NO_IMAGE = "no image"
NO_STEPS = "no steps"
EMPTY_STEP_TEXT = "empty step text"
BAD_SCORE = "missing or non-numeric score"
NON_FINITE_SCORE = "non-finite score (stepwise formats)"
IMAGE_NOT_A_PATH = "image entry that is not a file path (stepwise formats)"
IMAGE_OUTSIDE = "image path outside the corpus folder (stepwise formats)"
DROP_REASONS = (
    NO_IMAGE,
    NO_STEPS,
    EMPTY_STEP_TEXT,
    BAD_SCORE,
    NON_FINITE_SCORE,
    IMAGE_NOT_A_PATH,
    IMAGE_OUTSIDE,
)

WIDENED = float(2**63)
"""orjson turns an integer literal beyond 64 bits into a float at least this large."""
INT_DIGITS = sys.get_int_max_str_digits() or 1 << 40
"""`json.loads` refuses integer literals longer than this; msgspec does not, so longer lines take `json`."""


class RolloutError(MPRMError):
    """A line the reference cannot read: `reason` is one of the reasons above, `field` the value at fault."""

    def __init__(self, message: str, *, reason: str = UNREADABLE, field: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.detail = detail


_NOTHING = object()  # no value parsed yet


# --------------------------------------------------------------------------------------------- lines
def split_lines(buffer: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset, line without its terminator) by Python's universal newlines (`\\n`, `\\r\\n`, a lone
    `\\r`), as the reference reads a file; a final terminator ends no further line."""
    position, end, find = 0, len(buffer), buffer.find
    if b"\r" not in buffer:
        while position < end:
            newline = find(b"\n", position)
            stop = end if newline == -1 else newline
            yield position, buffer[position:stop]
            position = stop + 1
        return
    while position < end:
        newline, carriage = find(b"\n", position), find(b"\r", position)
        stop = min(index for index in (newline, carriage, end) if index != -1)
        yield position, buffer[position:stop]
        position = stop + (2 if buffer[stop : stop + 2] == b"\r\n" else 1)


def parse_line(line: bytes, *, exact: bool = False) -> tuple[dict | None, str]:
    """(record, "") of a line `json.loads(line.decode().strip())` reads as an object, (record,
    NON_STANDARD_JSON) when only Python's `json` reads it, or (None, BLANK / NOT_JSON). `exact` skips
    orjson (for a line whose values must not be widened)."""
    stripped = line.strip()
    if not stripped:
        return None, BLANK
    record: Any = _NOTHING
    if not exact:  # orjson refuses what json refuses, and any integer beyond a double (json decides those)
        try:
            record = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            record = _NOTHING  # only Python's json may read it
    note = ""
    if record is _NOTHING:
        try:
            text = stripped.decode("utf-8").strip()
        except UnicodeDecodeError as error:
            raise RolloutError(f"not valid UTF-8 ({error.reason} at byte {error.start})") from None
        if not text:
            return None, BLANK
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            return None, NOT_JSON
        except (ValueError, RecursionError) as error:  # e.g. an integer longer than Python's digit limit
            raise RolloutError(f"cannot be parsed as JSON ({error})") from None
        note = "" if exact else NON_STANDARD_JSON
    if type(record) is not dict:
        kind = type(record).__name__
        raise RolloutError(f"a record must be a JSON object, got {kind}", reason=NOT_OBJECT, detail=kind)
    return record, note


def numeric_score(value: object, index: int) -> float | None:
    """`float(value)` when the reference counts the value as a score (not null, `float()` accepts it),
    else None; a number too large for a float is a RolloutError (the reference crashes on it)."""
    if value is None:
        return None
    if type(value) is float:
        return value
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    except OverflowError:
        raise RolloutError(
            f"field 'steps_with_score[{index}].score' is too large for a float",
            field=f"steps_with_score[{index}].score",
        ) from None


def step_scores(record: dict) -> list[float | None]:
    """Each step's numeric score, or None (the reference's `extract_step_scores` skips it)."""
    steps = record.get("steps_with_score") or []
    if type(steps) is not list:
        raise RolloutError(
            f"field 'steps_with_score' must be a list, got {type(steps).__name__}",
            reason=STEPS_NOT_LIST,
            field="steps_with_score",
            detail=type(steps).__name__,
        )
    scores = []
    for index, step in enumerate(steps):
        if type(step) is not dict:
            raise RolloutError(
                f"field 'steps_with_score[{index}]' must be an object, got {type(step).__name__}",
                reason=STEP_NOT_OBJECT,
                field=f"steps_with_score[{index}]",
                detail=f"{type(step).__name__} {step!r}",
            )
        scores.append(numeric_score(step.get("score"), index))
    return scores


def read_line(line: bytes) -> tuple[dict | None, list[float | None], str]:
    """(record, each step's numeric score or None, note) of one line by the reference's rules, or
    (None, [], BLANK / NOT_JSON). A rollout is ranked when one of its scores is numeric."""
    record, note = parse_line(line)
    if record is None:
        return None, [], note
    scores = step_scores(record)
    if not note and _maybe_widened(record, scores):
        record, note = parse_line(line, exact=True)
        scores = step_scores(record)  # type: ignore[arg-type]
    return record, scores, note


def _maybe_widened(record: dict, scores: list[float | None]) -> bool:
    """Whether orjson may have widened an integer that a rule reads (a score, or a question that is a
    number): `json` reads such a line again."""
    values = (*scores, record.get("question_orig"), record.get("question"))
    return any(type(value) is float and not -WIDENED < value < WIDENED for value in values)


# ---------------------------------------------------------------------------------------- conversion
@dataclass(slots=True)
class Rollout:
    """A rollout the conversion rule lets through: what every output is made of."""

    image: object  # a non-empty string or list, as the record holds it
    question: str  # stripped
    texts: list[str]  # stripped, non-empty
    scores: list[float]
    exact: bool = False  # read by `json`: the reference's line is written with `json`'s encoder
    finite: bool = False  # every score is known to be finite (msgspec reads no NaN or Infinity)


class Drop(NamedTuple):
    """Why the conversion rule drops a rollout, and the field at fault."""

    reason: str
    field: str


def to_rollout(
    image: object,
    question_orig: object,
    question: object,
    texts: Sequence[object],
    scores: list[float | None],
) -> Rollout | Drop:
    """The conversion rule (the module docstring), on a rollout's values as the record holds them (a
    score already through `numeric_score`). The common rollout takes one comprehension; a rollout that
    is dropped, or that the reference cannot convert, is worked out step by step, in step order."""
    if not image:
        return Drop(NO_IMAGE, "image")
    if not texts:
        return Drop(NO_STEPS, "steps_with_score")
    try:  # the reference's `(step.get("step") or "").strip()`: null, 0 and false are empty text
        stripped = [text.strip() if text else "" for text in texts]  # type: ignore[union-attr]
    except AttributeError:  # a text that is not a string
        stripped = []
    if len(stripped) != len(texts) or not all(stripped) or None in scores:
        return _first_drop(texts, scores)
    prompt = question_orig or question or ""
    return Rollout(image, (prompt if type(prompt) is str else str(prompt)).strip(), stripped, scores)  # type: ignore[arg-type]


def _first_drop(texts: Sequence[object], scores: Sequence[float | None]) -> Drop:
    """The first step, in order, that drops the rollout (empty text, then a non-numeric score), or the
    RolloutError of a text that is not a string, where the reference crashes."""
    for index, (text, score) in enumerate(zip(texts, scores, strict=True)):
        if text and type(text) is not str:
            raise RolloutError(
                f"field 'steps_with_score[{index}].step' must be a string, got {type(text).__name__}",
                field=f"steps_with_score[{index}].step",
            )
        if not text or not text.strip():  # type: ignore[union-attr]
            return Drop(EMPTY_STEP_TEXT, f"steps_with_score[{index}].step")
        if score is None:
            return Drop(BAD_SCORE, f"steps_with_score[{index}].score")
    raise AssertionError("the rollout has no step to drop it")


def record_rollout(record: dict) -> Rollout | Drop:
    """The conversion rule on a record `parse_line(..., exact=True)` read; text the reference cannot
    write (a lone surrogate escape) is a RolloutError."""
    steps = record.get("steps_with_score") or []
    scores = step_scores(record)
    texts = [step.get("step") for step in steps]
    rollout = to_rollout(
        record.get("image", ""), record.get("question_orig"), record.get("question"), texts, scores
    )
    if isinstance(rollout, Rollout):
        try:  # only `json` lets lone surrogates through; the reference crashes writing them
            "".join(
                [rollout.question, *rollout.texts, json.dumps(rollout.image, ensure_ascii=False)]
            ).encode()
        except UnicodeEncodeError:
            raise RolloutError("text holds a lone surrogate escape and cannot be written as UTF-8") from None
        rollout.exact = True
    return rollout


def stepwise_problem(rollout: Rollout, *, allow_outside_images: bool = False) -> Drop | None:
    """The drops stepwise records add to the rule: a non-finite score, an image entry that is not a file
    path, or (unless allowed) a path that is absolute or climbs out with `..` (a corpus must not point
    at /etc/passwd)."""
    if not rollout.finite and not all(map(math.isfinite, rollout.scores)):
        return Drop(NON_FINITE_SCORE, "steps_with_score")
    image = rollout.image
    names = [image] if type(image) is str else image
    if type(names) is not list or not all(type(name) is str and name for name in names):
        return Drop(IMAGE_NOT_A_PATH, "image")
    if not allow_outside_images and any(
        name[0] == "/" or (".." in name and _climbs_out(name)) for name in names
    ):
        return Drop(IMAGE_OUTSIDE, "image")
    return None


def _climbs_out(name: str) -> bool:
    return os.path.normpath(name).split(os.sep)[0] == ".."


def stepwise_record(rollout: Rollout, *, id: str, source: str, image_root: str, threshold: float) -> dict:
    """docs/definitions.md#stepwise-records: a step is positive iff its MC score > threshold; image paths
    are joined to the corpus root by `os.path.join`'s rule (an absolute path stays as it is)."""
    prefix = image_root.rstrip("/") + "/"
    names = [rollout.image] if type(rollout.image) is str else rollout.image
    return {
        "id": id,
        "source": source,
        "images": [name if name[0] == "/" else prefix + name for name in names],  # type: ignore[index]
        "prompt": rollout.question,
        "completions": rollout.texts,
        "labels": [score > threshold for score in rollout.scores],
        "mc_scores": rollout.scores,
    }


def reference_line(rollout: Rollout) -> bytes:
    """The reference's PRM record + "\\n" as UTF-8, exactly as `json.dumps(..., ensure_ascii=False)`:
    `{"image": img, "conversations": [{"from": "human", "value": "Question: {q}\\nProcess: s1<prm>\\n\\n
    s2<prm>"}, {"from": "gpt", "value": [1.0, 0.0, ...]}]}`."""
    labels = ", ".join(["1.0" if score > 0.0 else "0.0" for score in rollout.scores])
    human = "Question: " + rollout.question + "\nProcess: " + "<prm>\n\n".join(rollout.texts) + "<prm>"
    if not rollout.exact and type(rollout.image) is str:
        # orjson.dumps of a string is encode_basestring's text, encoded (a test checks every code point)
        image, human_json = orjson.dumps(rollout.image), orjson.dumps(human)
    else:
        image = json.dumps(rollout.image, ensure_ascii=False).encode()
        human_json = encode_basestring(human).encode()
    return b"".join(
        (
            b'{"image": ',
            image,
            b', "conversations": [{"from": "human", "value": ',
            human_json,
            b'}, {"from": "gpt", "value": [',
            labels.encode(),
            b"]}]}\n",
        )
    )


# -------------------------------------------------------------------------------------- many lines
class _ScoredStep(msgspec.Struct, gc=False):
    score: float | None = None


class _ScoredRecord(msgspec.Struct, gc=False):
    steps_with_score: list[_ScoredStep] | None = None


class _Step(msgspec.Struct, gc=False):
    step: str | None = None
    score: float | None = None


class _Record(msgspec.Struct, gc=False):
    image: str | list[str] = ""
    question_orig: str | None = None
    question: str | None = None
    steps_with_score: list[_Step] | None = None


DECODE_ERRORS = (ValueError, RecursionError, msgspec.MsgspecError)
"""What a typed decode raises on a line it does not read; the line then takes `read_line`."""
_decode_scores = msgspec.json.Decoder(_ScoredRecord).decode
_decode_score_lines = msgspec.json.Decoder(_ScoredRecord).decode_lines
_decode_record = msgspec.json.Decoder(_Record).decode
_decode_record_lines = msgspec.json.Decoder(_Record).decode_lines


def decode_score_lines(data: bytes | memoryview) -> list[list[_ScoredStep] | None]:
    """Each line's steps (`.score` a float or None) in one typed msgspec call, which validates every
    value as JSON but builds Python objects only for the scores. Raises DECODE_ERRORS for a line of
    another shape (a string, boolean or non-finite score, a record that is not an object, ...). The
    caller checks that the data is UTF-8 and holds no digit run over INT_DIGITS, which msgspec accepts."""
    return [record.steps_with_score for record in _decode_score_lines(data)]


def decode_steps(line: bytes | memoryview) -> list[_ScoredStep] | None:
    """`decode_score_lines` for one line."""
    return _decode_scores(line).steps_with_score


def _typed_rollout(record: _Record) -> Rollout | Drop:
    """The rule on a record msgspec typed (string or null texts, finite float or null scores)."""
    steps = record.steps_with_score or ()
    rollout = to_rollout(
        record.image,
        record.question_orig,
        record.question,
        [step.step for step in steps],
        [step.score for step in steps],
    )
    if isinstance(rollout, Rollout):
        rollout.finite = True
    return rollout


def read_rollouts(
    path: str | os.PathLike, offsets: Sequence[int], lengths: Sequence[int]
) -> list[Rollout | Drop]:
    """The lines of one file at these byte spans (lines the scan ranked), through the conversion rule.
    One msgspec call for all of them when every line has the common shape, else line by line; a line
    msgspec refuses is read again by `json`. Raises RolloutError (no location) where the reference crashes."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        lines = [
            os.pread(descriptor, length, offset) for offset, length in zip(offsets, lengths, strict=True)
        ]
    finally:
        os.close(descriptor)
    try:  # a ranked line holds no newline and one JSON value: one record per line
        records = _decode_record_lines(b"\n".join(lines))
    except DECODE_ERRORS:
        records = []
    if len(records) == len(lines):
        return [_typed_rollout(record) for record in records]
    out: list[Rollout | Drop] = []
    for line in lines:
        try:
            out.append(_typed_rollout(_decode_record(line)))
        except DECODE_ERRORS:
            record, _ = parse_line(line, exact=True)  # a ranked line is an object
            out.append(record_rollout(record))  # type: ignore[arg-type]
    return out
