"""Stepwise records: conversion and its drop rule, the reference conversation, loading ours and TRL's."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from mprm_hf.data import rollout as rules
from mprm_hf.data import stepwise as sw
from mprm_hf.data.stepwise import (
    STEPWISE_FEATURES,
    load_stepwise,
    rollout_to_stepwise,
    to_stepwise,
)
from mprm_hf.data.visualprm400k import load_visualprm400k
from mprm_hf.errors import MPRMError


def row(scores=(0.5, 0.0, 0.0625), steps=None, **overrides) -> dict:
    """A row shaped like `load_visualprm400k` output."""
    steps = list(steps) if steps is not None else [f" step {i} \n" for i in range(len(scores))]
    record = {
        "id": "geo:3",
        "source": "geo",
        "line": 3,
        "image": ["VisualPRM400K-v1.1-Raw/geo/1.png"],
        "image_root": "/data/vprm",
        "question": "<image>\nWhat is x? Think step by step.",
        "question_orig": "  What is x?\n",
        "answer": "52",
        "response": "",
        "steps": steps,
        "mc_scores": list(scores),
        "num_mc_correct": [None] * len(scores),
        "num_mc_total": [16] * len(scores),
        "num_mc_sequences": 16,
    }
    record.update(overrides)
    return record


def test_rollout_to_stepwise_follows_spec_2_2():
    record = rollout_to_stepwise(row())
    assert record == {
        "id": "geo:3",
        "source": "geo",
        "images": ["/data/vprm/VisualPRM400K-v1.1-Raw/geo/1.png"],
        "prompt": "What is x?",
        "completions": ["step 0", "step 1", "step 2"],
        "labels": [True, False, True],  # positive iff score > 0.0: only MC = 0 is negative
        "mc_scores": [0.5, 0.0, 0.0625],
    }
    assert rollout_to_stepwise(row(), threshold=0.25)["labels"] == [True, False, False]
    # question_orig empty -> question, stripped
    assert rollout_to_stepwise(row(question_orig=""))["prompt"] == "<image>\nWhat is x? Think step by step."


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image": []}, "field 'image': no image"),
        ({"steps": [], "mc_scores": []}, "field 'steps_with_score': no steps"),
        ({"steps": ["a", "  ", "c"]}, r"field 'steps_with_score\[1\].step': empty step text"),
        (
            {"mc_scores": [0.5, None, 0.0]},
            r"field 'steps_with_score\[1\].score': missing or non-numeric score",
        ),
        (
            {"mc_scores": [0.5, 0.0, float("nan")]},  # numeric to the reference; no soft label to train on
            r"field 'steps_with_score': non-finite score",
        ),
        ({"image": ["a.png", ""]}, r"field 'image': image entry that is not a file path"),
        ({"image": ["/etc/passwd"]}, r"field 'image': image path outside the corpus folder"),
    ],
)
def test_rollout_to_stepwise_refuses_what_the_drop_rule_drops(overrides, message):
    with pytest.raises(MPRMError, match=f"^geo:3: {message}"):
        rollout_to_stepwise(row(**overrides))


def write_corpus(root: Path, lines: list) -> Path:
    (root / "annotations").mkdir(parents=True)
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    (root / "annotations" / "geo.jsonl").write_text(text, encoding="utf-8")
    return root


def raw(scores, texts=None, image="VisualPRM400K-v1.1-Raw/geo/1.png") -> dict:
    texts = texts or [f"step {i}" for i in range(len(scores))]
    return {
        "image": image,
        "question": "<image>\nq",
        "question_orig": "q",
        "answer": "1",
        "response": "",
        "steps_with_score": [
            {"step": t, "score": s, "num_mc_correct": 0, "num_mc_total": 16}
            for t, s in zip(texts, scores, strict=True)
        ],
        "num_mc_sequences": 16,
    }


def test_to_stepwise_drops_whole_rollouts_and_reports_them(tmp_path):
    root = write_corpus(
        tmp_path / "corpus",
        [
            raw([0.5, 0.0]),  # 1 kept
            raw([0.5, 0.25, 0.0], texts=["a", "", "c"]),  # 2 empty step text (3 steps)
            raw([0.5, None]),  # 3 missing score (2 steps)
            raw([0.5, "abc", 1.0, 0.0]),  # 4 non-numeric score (4 steps)
            raw([1.0], image=""),  # 5 no image (1 step)
            "truncated {",  # 6: the loader's, not the converter's
            raw([0.0, 0.0, 0.125]),  # 7 kept
        ],
    )
    ds, _ = load_visualprm400k(root, cache_dir=tmp_path / "cache")
    records, report = to_stepwise(ds)

    assert records.features == STEPWISE_FEATURES
    assert records["id"] == ["geo:1", "geo:7"]
    assert records["labels"] == [[True, False], [False, False, True]]
    assert records["mc_scores"] == [[0.5, 0.0], [0.0, 0.0, 0.125]]
    assert report.records_read == 6 and report.records_kept == 2
    assert dict(report.counts) == {sw.EMPTY_STEP_TEXT: 1, sw.BAD_SCORE: 2, sw.NO_IMAGE: 1}
    assert dict(report.steps) == {sw.EMPTY_STEP_TEXT: 3, sw.BAD_SCORE: 6, sw.NO_IMAGE: 1}
    assert set(report.actions.values()) == {"dropped"}
    located = [str(issue) for issue in report.examples]
    assert located == [
        "annotations/geo.jsonl:2: field 'steps_with_score[1].step': empty step text",
        "annotations/geo.jsonl:3: field 'steps_with_score[1].score': missing or non-numeric score",
        "annotations/geo.jsonl:4: field 'steps_with_score[1].score': missing or non-numeric score",
        "annotations/geo.jsonl:5: field 'image': no image",
    ]
    summary = report.summary()
    assert "6 records read, 2 kept, 4 dropped" in summary
    assert "missing or non-numeric score" in summary and " 6" in summary


def test_to_stepwise_soft_and_hard_labels_at_a_threshold(tmp_path):
    root = write_corpus(tmp_path / "corpus", [raw([0.0625, 0.5, 0.0, 1.0])])
    ds, _ = load_visualprm400k(root, cache_dir=tmp_path / "cache")
    records, _ = to_stepwise(ds, threshold=0.1)
    assert records[0]["labels"] == [False, True, False, True]
    assert records[0]["mc_scores"] == [0.0625, 0.5, 0.0, 1.0]


def test_reference_line_matches_spec_3_byte_for_byte():
    """The reference's PRM record, from the one conversion rule: question and steps stripped."""
    record = {
        "image": "VisualPRM400K-v1.1-Raw/geo/1.png",
        "question_orig": "  What is x?\n",
        "steps_with_score": [{"step": " First, x = 2. ", "score": 1.0}, {"step": "So x = 4.", "score": 0.0}],
    }
    rollout = rules.record_rollout(record)
    assert rules.reference_line(rollout) == (
        b'{"image": "VisualPRM400K-v1.1-Raw/geo/1.png", "conversations": [{"from": "human", "value": '
        b'"Question: What is x?\\nProcess: First, x = 2.<prm>\\n\\nSo x = 4.<prm>"}, '
        b'{"from": "gpt", "value": [1.0, 0.0]}]}\n'
    )
    # hard labels at 0; non-ASCII is written as is (ensure_ascii=False); an image list stays a list
    record = {
        "image": ["l.png", "r.png"],
        "question": "Угол?",
        "steps_with_score": [{"step": "a", "score": 0.4375}],
    }
    line = rules.reference_line(rules.record_rollout(record)).decode()
    assert line.startswith(
        '{"image": ["l.png", "r.png"], "conversations": [{"from": "human", "value": "Question: Угол?'
    )
    assert line.endswith('"value": [1.0]}]}\n')
    assert json.loads(line) == {
        "image": ["l.png", "r.png"],
        "conversations": [
            {"from": "human", "value": "Question: Угол?\nProcess: a<prm>"},
            {"from": "gpt", "value": [1.0]},
        ],
    }


def ours() -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [rollout_to_stepwise(row()), rollout_to_stepwise(row(id="geo:4", scores=(0.0,)))],
        features=STEPWISE_FEATURES,
    )


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "save_to_disk", "dataset_dict"])
def test_load_stepwise_reads_our_records_back(tmp_path, kind):
    data = ours()
    if kind == "jsonl":
        target = tmp_path / "train.jsonl"
        data.to_json(target)
    elif kind == "parquet":
        target = tmp_path / "train.parquet"
        data.to_parquet(target)
    elif kind == "save_to_disk":
        target = tmp_path / "saved"
        data.save_to_disk(target)
    else:
        target = tmp_path / "saved_dict"
        datasets.DatasetDict({"train": data, "test": data.select([0])}).save_to_disk(target)
    loaded = load_stepwise(target)
    assert loaded.features == STEPWISE_FEATURES
    assert loaded.to_list() == data.to_list()
    if kind == "dataset_dict":
        assert len(load_stepwise(target, split="test")) == 1
        with pytest.raises(MPRMError, match="no split 'dev'"):
            load_stepwise(target, split="dev")


def trl_rows() -> list[dict]:
    return [
        {
            "prompt": "Which number is larger, 9.8 or 9.11?",
            "completions": ["11 > 8.", "So 9.11 is larger."],
            "labels": [False, False],
        },
        {"prompt": "2 + 2?", "completions": ["2 + 2 = 4."], "labels": [True]},
    ]


def test_load_stepwise_accepts_trl_stepwise_supervision(tmp_path):
    path = tmp_path / "trl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in trl_rows()), encoding="utf-8")
    loaded = load_stepwise(path)
    assert loaded.features == STEPWISE_FEATURES
    assert loaded[0] == {
        "id": "trl.jsonl:0",
        "source": "",
        "images": [],
        "prompt": "Which number is larger, 9.8 or 9.11?",
        "completions": ["11 > 8.", "So 9.11 is larger."],
        "labels": [False, False],
        "mc_scores": [0.0, 0.0],
    }
    assert loaded[1]["mc_scores"] == [1.0]
    # the same from a local dataset folder of data files (the layout of a Hub dataset repo)
    folder = tmp_path / "repo" / "data"
    folder.mkdir(parents=True)
    datasets.Dataset.from_list(trl_rows()).to_parquet(folder / "train-00000-of-00001.parquet")
    assert (
        load_stepwise(tmp_path / "repo").remove_columns("id").to_list()
        == loaded.remove_columns("id").to_list()
    )


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [
                {"prompt": "p", "completions": ["a", "b"], "labels": [True, False]},
                {"prompt": "p", "completions": ["a"], "labels": [True, True]},
            ],
            "record 1: field 'labels' has 2 entries but 'completions' has 1",
        ),
        ([{"prompt": "p", "completions": [], "labels": []}], "record 0: field 'completions' is empty"),
        ([{"prompt": "p", "completions": ["a"]}], "missing field\\(s\\) labels"),
        (
            [{"prompt": "p", "completions": ["a"], "labels": [True], "images": [], "mc_scores": [0.5, 0.5]}],
            "record 0: field 'mc_scores' has 2 entries but 'completions' has 1",
        ),
        (
            [{"prompt": [{"role": "user", "content": "p"}], "completions": ["a"], "labels": [True]}],
            "field 'prompt' must be text",
        ),
    ],
)
def test_load_stepwise_validates_lengths_in_one_line(tmp_path, rows, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(MPRMError, match=message) as err:
        load_stepwise(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


def test_load_stepwise_missing_inputs_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MPRMError, match="unknown file type"):
        (tmp_path / "x.csv").write_text("a\n")
        load_stepwise(tmp_path / "x.csv")
    with pytest.raises(MPRMError, match="no such folder, and not a Hub dataset id"):
        load_stepwise(tmp_path / "nowhere")
    with pytest.raises(MPRMError) as err:
        load_stepwise("no-such-owner/no-such-stepwise-xyz")
    assert "\n" not in str(err.value)


def test_synthetic_world_converts_and_round_trips(synthetic_dir, tmp_path):
    ds, _ = load_visualprm400k(synthetic_dir, cache_dir=tmp_path / "cache")
    records, report = to_stepwise(ds)
    assert report.records_read == len(ds) == 600
    assert report.records_kept == len(records) == 600 - sum(report.counts.values())
    labels = [label for row in records["labels"] for label in row]
    negatives = labels.count(False) / len(labels)
    assert 0.03 < negatives < 0.4  # the synthetic world's MC = 0 share: a mixture, not all one label
    for record in records.select(range(0, len(records), 50)):
        assert all(Path(p).is_file() for p in record["images"])
        assert record["labels"] == [s > 0 for s in record["mc_scores"]]
        assert record["prompt"] == record["prompt"].strip() and record["prompt"]
    records.save_to_disk(tmp_path / "stepwise")
    assert load_stepwise(tmp_path / "stepwise").to_list() == records.to_list()


def test_load_stepwise_keeps_the_columns_a_dataset_has(tmp_path):
    rows = [dict(r, images=["/img/a.png"]) for r in trl_rows()]
    path = tmp_path / "with_images.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    loaded = load_stepwise(path)
    assert loaded["images"] == [["/img/a.png"], ["/img/a.png"]]
    assert loaded["mc_scores"] == [[0.0, 0.0], [1.0]]

    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    pictures = datasets.Dataset.from_dict(
        {
            "prompt": ["p"],
            "completions": [["a"]],
            "labels": [[True]],
            "images": [[str(tmp_path / "x.png")]],
        },
        features=datasets.Features(
            {
                "prompt": datasets.Value("string"),
                "completions": datasets.List(datasets.Value("string")),
                "labels": datasets.List(datasets.Value("bool")),
                "images": datasets.List(datasets.Image()),
            }
        ),
    )
    pictures.save_to_disk(tmp_path / "pictures")
    loaded = load_stepwise(tmp_path / "pictures")  # a subset published with its images embedded
    assert isinstance(loaded.features["images"].feature, datasets.Image)
    assert isinstance(loaded[0]["images"][0], Image.Image) and loaded[0]["images"][0].size == (4, 4)

    numbers = datasets.Dataset.from_dict(
        {"prompt": ["p"], "completions": [["a"]], "labels": [[True]], "images": [[3]]}
    )
    numbers.save_to_disk(tmp_path / "numbers")
    with pytest.raises(MPRMError, match="field 'images' must be a list of images or image paths"):
        load_stepwise(tmp_path / "numbers")


def test_to_stepwise_with_nothing_left_keeps_the_schema():
    from mprm_hf.data.visualprm400k import VISUALPRM400K_FEATURES

    ds = datasets.Dataset.from_list([row(image=[])], features=VISUALPRM400K_FEATURES)
    records, report = to_stepwise(ds)
    assert len(records) == 0 and records.features == STEPWISE_FEATURES
    assert report.count(sw.NO_IMAGE) == 1 and "1 records read, 0 kept, 1 dropped" in report.summary()
    records, report = to_stepwise(ds.select([]))
    assert len(records) == 0 and records.features == STEPWISE_FEATURES and report.records_read == 0


def test_load_stepwise_of_an_empty_file_is_one_line(tmp_path):
    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "completions": datasets.List(datasets.Value("string")),
            "labels": datasets.List(datasets.Value("bool")),
        }
    )
    datasets.Dataset.from_dict({"prompt": [], "completions": [], "labels": []}, features=features).to_parquet(
        tmp_path / "empty.parquet"
    )
    with pytest.raises(MPRMError, match="empty.parquet: cannot read a stepwise dataset") as err:
        load_stepwise(tmp_path / "empty.parquet")
    assert "\n" not in str(err.value)


GOOD_LINE = b'{"prompt": "p", "completions": ["a", "b"], "labels": [true, false]}\n'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            GOOD_LINE + b'{"prompt": "p", "completions": ["a", "b"], "labels": ["no", "yes"]}\n',
            ":2: field 'labels[0]' must be true or false (or 0 / 1), got 'no'",
        ),
        (
            GOOD_LINE + b'{"prompt": "p", "completions": ["a", "b"], "labels": [true, "no"]}\n',
            ":2: field 'labels[1]' must be true or false (or 0 / 1), got 'no'",
        ),
        (
            b'{"prompt": "p", "completions": ["a", "b"], "labels": [1, 2]}\n',
            ":1: field 'labels[1]' must be true or false (or 0 / 1), got 2",
        ),
        (b"", ": holds no records (empty file)"),
        (b"\n  \n", ": holds no records (empty file)"),
        (GOOD_LINE + b'{"prompt": "p", "compl', ":2: not a JSON line (truncated?)"),
        (GOOD_LINE + b'{"prompt": "p\xff", "completions": ["a"], "labels": [true]}\n', ":2: not valid UTF-8"),
    ],
    ids=["string-labels", "mixed-labels", "label-2", "empty", "blank", "truncated", "not-utf8"],
)
def test_broken_stepwise_jsonl_is_one_line_naming_file_line_and_field(tmp_path, content, message):
    """Labels never silently change ("no" is not True), and a broken file is one located line."""
    path = tmp_path / "records.jsonl"
    path.write_bytes(content)
    with pytest.raises(MPRMError) as err:
        load_stepwise(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value) and "\n" not in str(err.value)


def test_zero_one_labels_are_read_as_booleans(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_bytes(b'{"prompt": "p", "completions": ["a", "b"], "labels": [1, 0]}\n')
    assert load_stepwise(path)["labels"] == [[True, False]]


def test_a_json_array_file_is_not_checked_as_lines(tmp_path):
    """`.json` may hold one JSON array of records; only `.jsonl` is checked line by line."""
    path = tmp_path / "records.json"
    path.write_text('[{"prompt": "p", "completions": ["a"], "labels": [true]}]', encoding="utf-8")
    assert load_stepwise(path)["labels"] == [[True]]
