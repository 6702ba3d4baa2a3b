"""One rollout reader and one conversion rule: every path that reads the corpus gives the same records.

The same edge-case corpus goes through the selection scan and writers (`build_subset`, stepwise jsonl
and the reference format), the `datasets` builder (`load_visualprm400k`), `select` on its Dataset and
`to_stepwise`; the ranked rollouts, the records and the drop reasons must agree. The corpus holds every
oddity the reference reads without crashing (the crashes are tested in test_selection_reference.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mprm_hf.data import rollout as rules
from mprm_hf.data.stepwise import drop_reason, to_stepwise
from mprm_hf.data.visualprm400k import load_visualprm400k
from mprm_hf.selection.selectors import select
from mprm_hf.selection.subset import build_subset


def step(text: object = "a step", score: object = 0.5, **extra: object) -> dict:
    return {"step": text, "score": score, "num_mc_correct": 8, "num_mc_total": 16, **extra}


def record(steps: object = None, **fields: object) -> dict:
    base = {"image": "VisualPRM400K-v1.1-Raw/src/1.png", "question": "<image>\nq?", "question_orig": "  q?  ",
            "answer": "1", "response": "r", "num_mc_sequences": 16}  # fmt: skip
    base["steps_with_score"] = [step(), step("two", 0.0)] if steps is None else steps
    base.update(fields)
    return base


EDGE_LINES: list[str] = [
    json.dumps(record()),
    json.dumps(record()),  # an exact tie
    "",
    "   \t",
    '{"image": "x.png", "steps_with_score": [{"step": "a", "sco',  # truncated
    "garbage",
    "\ufeff" + json.dumps(record()),  # a BOM: json.loads refuses it
    "\u3000" + json.dumps(record()) + "\u00a0",  # Unicode whitespace that str.strip() removes
    json.dumps(record([step(score=float("nan")), step()])),  # NaN: read by json, kept by the reference
    json.dumps(record([step(score=float("inf"))])),
    json.dumps(record([step(score="0.25"), step(score=True), step(score=" 1 ")])),  # float() reads them
    json.dumps(record([step(score=None), step()])),  # a null score: skipped when scoring, dropped at conversion
    json.dumps(record([{"step": "no score"}, step()])),
    json.dumps(record([step(score="abc"), step(score=[1])])),  # no numeric score: not ranked
    json.dumps(record([step(score=None)])),
    json.dumps(record([step(""), step()])),
    json.dumps(record([step("   "), step()])),
    json.dumps(record([step(None), step()])),
    json.dumps(record([step(0), step()])),  # a false text is empty text to the reference
    json.dumps(record([{"score": 0.5}, step()])),
    json.dumps(record([step("  padded\n"), step("é ü 😀 \"q\" \\ back")])),
    json.dumps(record(image="")),
    json.dumps(record(image=[])),
    json.dumps(record(image=None)),
    json.dumps({k: v for k, v in record().items() if k != "image"}),
    json.dumps(record(image=["VisualPRM400K-v1.1-Raw/l.png", "VisualPRM400K-v1.1-Raw/r.png"])),
    json.dumps(record(image=["", "VisualPRM400K-v1.1-Raw/r.png"])),  # kept by the reference, not a path
    json.dumps(record(image=[5, "VisualPRM400K-v1.1-Raw/r.png"])),
    json.dumps(record(image=7)),
    json.dumps(record(image=0)),
    json.dumps(record(image="/etc/passwd")),
    json.dumps(record(image="../outside.png")),
    json.dumps(record(question_orig="")),
    json.dumps(record(question_orig=0)),
    json.dumps(record(question_orig=7)),
    json.dumps(record(question_orig=None, question=None)),
    json.dumps({k: v for k, v in record().items() if k not in ("question", "question_orig")}),
    json.dumps(record(question_orig=["a", 1.5])),
    json.dumps(record(steps=[])),
    json.dumps(record(steps=None) | {"steps_with_score": None}),
    json.dumps(record() | {"steps_with_score": 0}),
    json.dumps({k: v for k, v in record().items() if k != "steps_with_score"}),
    '{"image": "a.png", "steps_with_score": [{"step": "x", "score": 1}], "steps_with_score": [{"step": "y", "score": 0.0}]}',
    json.dumps(record([step(score=0.0), step(score=0.0)])),  # all negative: BIS = alpha, a tie
    json.dumps(record([step(score=1), step(score=0)])),  # integer scores
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("edge").resolve()
    annotations = root / "annotations"
    annotations.mkdir()
    terminators = ["\n", "\r\n", "\r"]
    text = "".join(line + terminators[index % 3] for index, line in enumerate(EDGE_LINES))
    (annotations / "b_src.jsonl").write_bytes(text.encode("utf-8"))
    (annotations / "a_src.jsonl").write_bytes("\n".join(reversed(EDGE_LINES)).encode("utf-8"))
    return root


def test_every_path_reads_and_converts_the_same_rollouts(corpus: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    selected = build_subset(corpus, tmp_path / "full.jsonl", method="full", cache_dir=cache, progress=False)
    reference = build_subset(
        corpus,
        tmp_path / "ref.jsonl",
        fmt="reference",
        alpha=0.05,
        top_ratio=1.0,
        cache_dir=cache,
        progress=False,
    )
    rows, report = load_visualprm400k(corpus, cache_dir=tmp_path / "hf")

    # ranking: the scan's table holds exactly the loader's rows with a numeric score
    table = selected.scores
    ranked = {
        f"{table.files[f].stem}:{line}"
        for f, line in zip(table.column("file"), table.column("line"), strict=True)
    }
    numeric = {row["id"] for row in rows if any(score is not None for score in row["mc_scores"])}
    assert ranked == numeric and len(ranked) > 30
    assert set(select(rows, "full")["id"]) == ranked

    # conversion: the selection's stepwise records are to_stepwise's records, value for value
    written = {
        item["id"]: item for item in map(json.loads, (tmp_path / "full.jsonl").read_text().splitlines())
    }
    converted, _ = to_stepwise(rows)
    assert {item["id"]: item for item in converted.to_list() if item["id"] in ranked} == written

    # drop reasons: the writers' per kept row and the rule's on the loader's rows
    ids = selected.written_ids()
    reasons = dict(zip(_kept_ids(selected), selected.written_rows.reasons.tolist(), strict=True))
    by_id = {row["id"]: row for row in rows}
    assert {id: (drop_reason(by_id[id]) or ("",))[0] for id in ranked} == reasons
    for reason in (rules.NO_IMAGE, rules.EMPTY_STEP_TEXT, rules.BAD_SCORE, rules.NON_FINITE_SCORE,
                   rules.IMAGE_NOT_A_PATH, rules.IMAGE_OUTSIDE):  # fmt: skip
        assert reason in reasons.values(), reason

    # the reference format writes what the rule lets through, stepwise-only drops included
    stepwise_only = {rules.NON_FINITE_SCORE, rules.IMAGE_NOT_A_PATH, rules.IMAGE_OUTSIDE}
    assert reference.written_ids() == [
        id for id in _kept_ids(reference) if reasons[id] in stepwise_only | {""}
    ]
    assert sorted(ids) == sorted(id for id, reason in reasons.items() if not reason)
    assert report.records_kept == len(rows)


def _kept_ids(result) -> list[str]:  # noqa: ANN001 - a SubsetResult
    rows = result.selection.rows
    files, lines = result.scores.column("file")[rows], result.scores.column("line")[rows]
    return [f"{result.files[f].stem}:{line}" for f, line in zip(files.tolist(), lines.tolist(), strict=True)]


def test_the_typed_and_the_careful_route_agree_on_every_edge_line(tmp_path: Path) -> None:
    """`read_rollouts` reads a line with msgspec where it can; `json` and the rule give the same rollout."""
    path = tmp_path / "lines.jsonl"
    for line in EDGE_LINES:
        data = line.encode()
        try:
            record, _ = rules.parse_line(data, exact=True)
        except rules.RolloutError:
            continue
        if record is None or not any(score is not None for score in rules.step_scores(record)):
            continue  # not ranked: never converted
        path.write_bytes(data)
        (fast,) = rules.read_rollouts(path, [0], [len(data)])
        careful = rules.record_rollout(record)
        if isinstance(careful, rules.Drop):
            assert fast == careful, line
        else:
            assert (fast.image, fast.question, fast.texts, fast.scores) == (
                careful.image, careful.question, careful.texts, careful.scores,
            ), line  # fmt: skip


def test_the_reader_tells_standard_json_from_what_only_python_reads() -> None:
    long = json.dumps(record(response="x" * 10_000)).encode()  # longer than Python's integer digit limit
    assert rules.parse_line(long) == (json.loads(long), "")
    assert rules.parse_line(b'{"a": NaN}')[1] == rules.NON_STANDARD_JSON
    with pytest.raises(rules.RolloutError, match="cannot be parsed as JSON"):
        rules.parse_line(b'{"a": 1' + b"0" * 5000 + b"}")  # json.loads refuses it: the reference crashes
    widened = b'{"question_orig": 123456789012345678901234567890, "steps_with_score": [{"score": 1}]}'
    assert (
        rules.read_line(widened)[0]["question_orig"] == 123456789012345678901234567890
    )  # read again by json
