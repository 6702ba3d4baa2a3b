"""VisualPRM400K-v1.1-Raw loader: typed columns, every malformed case reported with file and line, caching."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import datasets
import pytest

from mprm_hf.data import visualprm400k as vp
from mprm_hf.data.visualprm400k import VISUALPRM400K_FEATURES, load_visualprm400k
from mprm_hf.errors import MPRMError


def rollout(scores=(0.5, 0.0), *, image="VisualPRM400K-v1.1-Raw/geo/1.png", **overrides) -> dict:
    record = {
        "image": image,
        "question": "<image>\nWhat is x? Answer step by step.",
        "question_orig": "  What is x?  ",
        "answer": "52",
        "response": "\n\n".join(f"step {i}" for i in range(len(scores))),
        "steps_with_score": [
            {"step": f"step {i}", "score": s, "num_mc_correct": int(s * 16), "num_mc_total": 16}
            for i, s in enumerate(scores)
        ],
        "num_mc_sequences": 16,
    }
    record.update(overrides)
    return record


def write_corpus(root: Path, files: dict[str, list[str | dict]]) -> Path:
    """`files` maps a source name to its lines: dicts are JSON-encoded, strings written verbatim."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for source, lines in files.items():
        text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
        (root / "annotations" / f"{source}.jsonl").write_text(text, encoding="utf-8")
    return root


def load(root: Path, tmp_path: Path, **kwargs):
    return load_visualprm400k(root, cache_dir=tmp_path / "cache", **kwargs)


def test_clean_corpus_has_agreed_typed_columns(tmp_path):
    root = write_corpus(
        tmp_path / "corpus",
        {
            "b_geo": [rollout((0.125, 0.0, 1.0)), rollout((1.0,))],
            "a_nlvr2": [
                rollout(image=["VisualPRM400K-v1.1-Raw/nlvr2/l.png", "VisualPRM400K-v1.1-Raw/nlvr2/r.png"])
            ],
        },
    )
    ds, report = load(root, tmp_path)

    assert ds.features == VISUALPRM400K_FEATURES
    assert ds.features["mc_scores"].feature.dtype == "float64"
    # Files in sorted name order, ids "<source>:<line>", 1-based lines.
    assert ds["id"] == ["a_nlvr2:1", "b_geo:1", "b_geo:2"]
    assert ds["source"] == ["a_nlvr2", "b_geo", "b_geo"]
    assert ds["line"] == [1, 1, 2]
    assert ds[0]["image"] == ["VisualPRM400K-v1.1-Raw/nlvr2/l.png", "VisualPRM400K-v1.1-Raw/nlvr2/r.png"]
    assert ds[1]["image"] == ["VisualPRM400K-v1.1-Raw/geo/1.png"]
    assert ds[1]["image_root"] == str(root.resolve())
    assert ds[1]["steps"] == ["step 0", "step 1", "step 2"]
    assert ds[1]["mc_scores"] == [0.125, 0.0, 1.0]
    assert ds[1]["num_mc_correct"] == [2, 0, 16]
    assert ds[1]["num_mc_total"] == [16, 16, 16]
    assert ds[1]["question_orig"] == "  What is x?  "  # the loader keeps text as written
    assert report.records_read == report.records_kept == 3
    assert report.total_issues == 0
    assert "no problems found" in report.summary()


MALFORMED_LINES: list[str | dict] = [
    rollout(),  # 1: fine
    '{"image": "x.png", "steps_with_score": [{"step": "a", "sco',  # 2: truncated
    "",  # 3: blank
    "[1, 2, 3]",  # 4: not an object
    {k: v for k, v in rollout().items() if k != "steps_with_score"},  # 5: required field missing
    rollout(steps_with_score=[]),  # 6: no steps
    rollout(steps_with_score="step one"),  # 7: steps not a list
    rollout(steps_with_score=[{"step": "  ", "score": 0.5}, {"step": "b", "score": 0.25}]),  # 8: empty text
    rollout(steps_with_score=[{"step": "a"}, {"step": "b", "score": None}]),  # 9: missing scores
    rollout(steps_with_score=[{"step": "a", "score": "abc"}, {"step": "b", "score": [1]}]),  # 10: non-numeric
    rollout(steps_with_score=[{"step": "a", "score": "0.5"}]),  # 11: numeric text
    '{"image": "i.png", "question": "q", "steps_with_score": [{"step": "a", "score": NaN}]}',  # 12: NaN
    rollout(steps_with_score=[{"step": "a", "score": 1.5, "num_mc_correct": 24, "num_mc_total": 16}]),  # 13
    rollout(
        steps_with_score=["just a string", {"step": "b", "score": 0.0}]
    ),  # 14: step not an object (skipped)
    {k: v for k, v in rollout().items() if k != "question"},  # 15: optional field missing
    rollout(image=""),  # 16: empty image
]


@pytest.fixture
def malformed(tmp_path):
    root = write_corpus(tmp_path / "corpus", {"bad": MALFORMED_LINES})
    return load(root, tmp_path)


def test_every_malformed_case_is_counted_by_reason(malformed):
    ds, report = malformed
    expected = {
        vp.UNPARSEABLE: 1,
        vp.BLANK: 1,
        vp.NOT_OBJECT: 1,
        vp.MISSING_STEPS: 1,
        vp.EMPTY_STEPS: 1,
        vp.STEPS_NOT_LIST: 1,
        vp.EMPTY_STEP_TEXT: 1,  # line 8
        vp.MISSING_SCORE: 2,  # line 9 (absent, null)
        vp.NON_NUMERIC_SCORE: 2,
        vp.TEXT_SCORE: 1,
        vp.NON_STANDARD_JSON: 1,
        vp.SCORE_OUT_OF_RANGE: 2,  # 1.5, and NaN
        vp.STEP_NOT_OBJECT: 1,
        vp.EMPTY_IMAGE: 1,
    }
    for reason, n in expected.items():
        assert report.count(reason) == n, (reason, report.summary())
    skipped = {vp.UNPARSEABLE, vp.BLANK, vp.NOT_OBJECT, vp.MISSING_STEPS, vp.EMPTY_STEPS, vp.STEPS_NOT_LIST,
               vp.STEP_NOT_OBJECT}  # fmt: skip
    assert {r for r, a in report.actions.items() if a == "skipped"} == skipped
    # 16 lines: 1 blank (not a record), 6 skipped records (the reference cannot read line 14), 9 kept.
    assert report.records_read == 15
    assert report.records_kept == len(ds) == 9
    assert ds["line"] == [1, 8, 9, 10, 11, 12, 13, 15, 16]


def test_malformed_examples_name_file_line_and_field(malformed):
    _, report = malformed
    located = {str(issue) for issue in report.examples}
    assert "annotations/bad.jsonl:2: unparseable JSON line" in "\n".join(located)
    assert "annotations/bad.jsonl:3: blank line" in located
    assert "annotations/bad.jsonl:4: record is not a JSON object (list)" in located
    assert "annotations/bad.jsonl:5: field 'steps_with_score': missing field 'steps_with_score'" in located
    assert "annotations/bad.jsonl:8: field 'steps_with_score[0].step': empty step text ('  ')" in located
    assert (
        "annotations/bad.jsonl:9: field 'steps_with_score[0].score': missing score (null) (absent)" in located
    )
    assert (
        "annotations/bad.jsonl:10: field 'steps_with_score[0].score': non-numeric score (null) ('abc')"
        in located
    )
    assert report.count(vp.MISSING_FIELD) > report.max_examples  # counted in full, located up to the cap
    assert len(report.examples_for(vp.MISSING_FIELD)) == report.max_examples
    summary = report.summary()
    assert "15 records read, 9 kept, 6 skipped" in summary
    for reason in report.counts:
        assert reason in summary


def test_malformed_values_are_kept_typed_not_guessed(malformed):
    ds, _ = malformed
    by_line = {row["line"]: row for row in ds}
    assert by_line[8]["steps"] == ["  ", "b"]
    assert by_line[9]["mc_scores"] == [None, None]
    assert by_line[10]["mc_scores"] == [None, None]
    assert by_line[11]["mc_scores"] == [0.5]  # Python float() semantics, as the reference reads it
    assert math.isnan(by_line[12]["mc_scores"][0])
    assert by_line[13]["mc_scores"] == [1.5]
    assert by_line[15]["question"] == ""
    assert by_line[16]["image"] == []


def test_report_logs_a_warning_table(malformed, caplog):
    _, report = malformed
    with caplog.at_level("WARNING"):
        report.log()
    assert "unparseable JSON line" in caplog.text and "skipped" in caplog.text


def test_missing_images_are_checked_once_images_are_present(tmp_path):
    root = write_corpus(
        tmp_path / "corpus",
        {
            "geo": [
                rollout(image="VisualPRM400K-v1.1-Raw/geo/1.png"),
                rollout(image="VisualPRM400K-v1.1-Raw/geo/2.png"),
            ]
        },
    )
    _, report = load(root, tmp_path)
    assert report.count(vp.IMAGE_MISSING) == 0  # no image folder beside the annotations: not checked

    _, report = load(root, tmp_path, with_images=True)
    assert report.count(vp.IMAGE_MISSING) == 2  # asked for images: every absent one is reported

    (root / "VisualPRM400K-v1.1-Raw" / "geo").mkdir(parents=True)
    (root / "VisualPRM400K-v1.1-Raw" / "geo" / "1.png").write_bytes(b"png")
    _, report = load(root, tmp_path)
    assert report.count(vp.IMAGE_MISSING) == 1
    assert [str(i) for i in report.examples_for(vp.IMAGE_MISSING)] == [
        "annotations/geo.jsonl:2: field 'image': image file missing (VisualPRM400K-v1.1-Raw/geo/2.png)"
    ]


def test_sources_filter_and_unknown_source(tmp_path):
    root = write_corpus(tmp_path / "corpus", {"a": [rollout()], "b": [rollout(), rollout()]})
    ds, _ = load(root, tmp_path, sources=["b"])
    assert ds["id"] == ["b:1", "b:2"]
    with pytest.raises(MPRMError, match=r"unknown source\(s\) c; available: a, b"):
        load(root, tmp_path, sources=["c"])


def test_folder_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MPRMError, match="no 'annotations/' folder") as err:
        load(tmp_path / "empty", tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(MPRMError, match="no such folder, and not a Hub dataset id"):
        load(tmp_path / "nowhere", tmp_path)


def test_offline_hub_id_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MPRMError) as err:
        load_visualprm400k("no-such-owner/no-such-dataset-xyz", cache_dir=tmp_path)
    message = str(err.value)
    assert message.startswith("no-such-owner/no-such-dataset-xyz: ") and "\n" not in message


def test_hub_layout_with_annotations_zip(tmp_path):
    """The Hub repo ships annotations.zip: it is unpacked once into the cache and read like a folder."""
    unpacked = write_corpus(tmp_path / "plain", {"geo": [rollout(), rollout((0.0,))]})
    hub = tmp_path / "hub"
    hub.mkdir()
    with zipfile.ZipFile(hub / "annotations.zip", "w") as zf:
        zf.write(unpacked / "annotations" / "geo.jsonl", "annotations/geo.jsonl")
    ds, report = load(hub, tmp_path)
    plain, _ = load(unpacked, tmp_path)
    assert ds.remove_columns("image_root").to_list() == plain.remove_columns("image_root").to_list()
    assert report.records_kept == 2


def test_warm_load_reuses_the_arrow_cache_and_its_report(tmp_path):
    root = write_corpus(tmp_path / "corpus", {"geo": [rollout(), "not json"]})
    cold, cold_report = load(root, tmp_path)
    arrow_files = [Path(c["filename"]) for c in cold.cache_files]
    assert arrow_files and all(f.is_file() and f.is_relative_to(tmp_path / "cache") for f in arrow_files)
    stamps = [f.stat().st_mtime_ns for f in arrow_files]

    warm, warm_report = load(root, tmp_path)
    assert [Path(c["filename"]) for c in warm.cache_files] == arrow_files
    assert [f.stat().st_mtime_ns for f in arrow_files] == stamps  # read, not rewritten
    assert warm_report.to_dict() == cold_report.to_dict()  # the report survives the cache hit

    with (root / "annotations" / "geo.jsonl").open("a") as handle:
        handle.write(json.dumps(rollout()) + "\n")
    changed, changed_report = load(root, tmp_path)
    assert len(changed) == 2 and changed_report.records_read == 3
    assert [Path(c["filename"]) for c in changed.cache_files] != arrow_files


def test_lost_report_sidecars_force_a_rebuild(tmp_path):
    import shutil

    root = write_corpus(tmp_path / "corpus", {"geo": [rollout(), "[]"]})
    load(root, tmp_path)
    shutil.rmtree(tmp_path / "cache" / "mprm_hf" / "reports")
    ds, report = load(root, tmp_path)
    assert len(ds) == 1 and report.count(vp.NOT_OBJECT) == 1


def test_num_proc_splits_files_and_keeps_order(tmp_path):
    root = write_corpus(
        tmp_path / "corpus", {f"s{i}": [rollout(), "oops", rollout((0.0, 1.0))] for i in range(4)}
    )
    serial, serial_report = load(root, tmp_path)
    parallel, parallel_report = load_visualprm400k(root, cache_dir=tmp_path / "cache2", num_proc=2)
    assert parallel.to_list() == serial.to_list()
    assert parallel_report.counts == serial_report.counts == {vp.UNPARSEABLE: 4}


def test_synthetic_world_loads_clean(synthetic_dir, tmp_path):
    ds, report = load_visualprm400k(synthetic_dir, cache_dir=tmp_path)
    assert len(ds) == 600
    assert report.total_issues == 0, report.summary()
    assert set(ds["source"]) == {p.stem for p in (synthetic_dir / "annotations").glob("*.jsonl")}
    nlvr2 = ds.filter(lambda source: source.startswith("nlvr2"), input_columns="source")
    assert len(nlvr2) and all(len(images) == 2 for images in nlvr2["image"])
    for row in ds.select(range(0, 600, 37)):
        assert all((Path(row["image_root"]) / image).is_file() for image in row["image"])
        assert len(row["steps"]) == len(row["mc_scores"]) == len(row["num_mc_total"])
        assert all(
            s == c / t
            for s, c, t in zip(row["mc_scores"], row["num_mc_correct"], row["num_mc_total"], strict=True)
        )
    assert isinstance(ds, datasets.Dataset)


def test_values_arrow_cannot_store_are_skipped_not_fatal(tmp_path):
    root = write_corpus(
        tmp_path / "corpus",
        {"geo": [rollout(), rollout(num_mc_sequences=2**63), rollout((0.0,))]},
    )
    ds, report = load(root, tmp_path)
    assert ds["line"] == [1, 3]
    assert report.count(vp.UNSTORABLE) == 1 and report.actions[vp.UNSTORABLE] == "skipped"
    assert str(report.examples_for(vp.UNSTORABLE)[0]).startswith(
        "annotations/geo.jsonl:2: value Arrow cannot store"
    )
    assert report.records_read == 3 and report.records_kept == 2


def test_empty_files_and_corpora_without_any_rollout(tmp_path):
    root = write_corpus(tmp_path / "corpus", {"a_empty": [], "b": [rollout()]})
    ds, report = load(root, tmp_path)
    assert ds["id"] == ["b:1"] and report.records_read == 1

    nothing = write_corpus(tmp_path / "nothing", {"a_empty": [], "b": ["oops"]})
    with pytest.raises(
        MPRMError,
        match=r"no usable rollout in 2 file\(s\) \(1 problems; first problem: annotations/b.jsonl:1: unparseable",
    ):
        load(nothing, tmp_path)
