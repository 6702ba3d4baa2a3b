"""VisualProcessBench loader: the 12 real records, image resolution, <imageN> tags, malformed records."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from mprm_hf.data import visualprocessbench as vpb
from mprm_hf.data.visualprocessbench import VISUALPROCESSBENCH_FEATURES, load_visualprocessbench
from mprm_hf.errors import MPRMError

FIXTURES = Path(__file__).parent / "fixtures"
REAL = FIXTURES / "visualprocessbench_real_12"
REKEYED = FIXTURES / "visualprocessbench_real_12.rekeyed.jsonl"


def bench_record(
    steps=("a", "b"), labels=(1, -1), *, image=("images/MMMU/1.png",), question="Q?", **extra
) -> dict:
    record = {
        "image": list(image),
        "question": question,
        "answer": "A",
        "response": {"steps": list(steps), "process_correctness": list(labels)},
        "policy_model": "GPT4o",
        "data_source": "MMMU_DEV_VAL",
    }
    record.update(extra)
    return record


def write_bench(root: Path, lines: list[str | dict], images: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    (root / "test.jsonl").write_text(text, encoding="utf-8")
    for image in images:
        (root / image).parent.mkdir(parents=True, exist_ok=True)
        (root / image).write_bytes(b"png")
    return root


def test_real_records_load_with_their_label_vectors(tmp_path):
    ds, report = load_visualprocessbench(REAL, cache_dir=tmp_path)
    rekeyed = [json.loads(line) for line in REKEYED.read_text(encoding="utf-8").splitlines()]
    assert ds.features == VISUALPROCESSBENCH_FEATURES
    assert len(ds) == len(rekeyed) == 12
    assert report.records_kept == 12 and report.records_skipped == 0
    for row, original in zip(ds, rekeyed, strict=True):
        assert row["steps"] == original["steps"]
        assert row["labels"] == original["process_correctness"]
        assert len(row["steps"]) == original["n_steps"]
        assert row["policy_model"] == original["policy"]
        assert row["data_source"] == original["source"]
        assert row["question"] == original["question"]
    labels = [label for row in ds["labels"] for label in row]
    assert set(labels) == {1, 0, -1}
    assert (labels.count(1), labels.count(0), labels.count(-1)) == (57, 12, 44)  # 113 steps in all
    assert set(ds["data_source"]) == {"WeMath", "MathVision_MINI", "MathVerse_MINI_Vision_Only", "DynaMath"}


def test_fixture_mapping_back_to_the_real_schema_loses_nothing():
    """The fixture is the re-keyed file mapped back to the benchmark's own field names, line for line."""
    real = [json.loads(line) for line in (REAL / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    rekeyed = [json.loads(line) for line in REKEYED.read_text(encoding="utf-8").splitlines()]
    for record, original in zip(real, rekeyed, strict=True):
        assert set(record) == {"image", "question", "answer", "response", "policy_model", "data_source"}
        assert record["response"] == {
            "steps": original["steps"],
            "process_correctness": original["process_correctness"],
        }
        assert (record["question"], record["policy_model"], record["data_source"]) == (
            original["question"],
            original["policy"],
            original["source"],
        )


def test_real_records_without_images_report_their_image_tags(tmp_path):
    """The re-keyed records carry no images, so the two questions that name <imageN> tags are flagged."""
    ds, report = load_visualprocessbench(REAL, cache_dir=tmp_path)
    assert ds["missing_images"] == [0] * 6 + [3, 1] + [0] * 4
    assert report.count(vpb.FEWER_IMAGES_THAN_TAGS) == 2
    assert [str(i) for i in report.examples_for(vpb.FEWER_IMAGES_THAN_TAGS)][0] == (
        "test.jsonl:7: field 'image': fewer images than <imageN> tags (3 tags, 0 images)"
    )


def test_images_resolve_to_absolute_paths_and_tags_are_counted(tmp_path):
    root = write_bench(
        tmp_path / "bench",
        [
            bench_record(image=("images/a.png", "images/b.png"), question="<image1> vs <image2>?"),
            bench_record(image=("images/a.png",), question="<image1> and <image 2> and <image3>"),
            bench_record(image=("images/gone.png",)),
        ],
        images=("images/a.png", "images/b.png"),
    )
    ds, report = load_visualprocessbench(root, cache_dir=tmp_path / "cache")
    assert ds[0]["images"] == [str((root / "images/a.png").resolve()), str((root / "images/b.png").resolve())]
    assert ds["missing_images"] == [0, 2, 0]
    assert report.count(vpb.FEWER_IMAGES_THAN_TAGS) == 1
    assert report.count(vpb.IMAGE_MISSING) == 1
    assert str(report.examples_for(vpb.IMAGE_MISSING)[0]) == (
        "test.jsonl:3: field 'image[0]': image file missing (images/gone.png)"
    )
    assert ds[2]["images"] == [str((root / "images/gone.png").resolve())]  # kept, and reported


def test_malformed_records_are_skipped_with_file_and_line(tmp_path):
    root = write_bench(
        tmp_path / "bench",
        [
            bench_record(),  # 1
            bench_record(steps=("a", "b", "c"), labels=(1, -1)),  # 2: mismatch
            bench_record(labels=(1, 2)),  # 3: bad label
            "",  # 4: blank
            '{"image": [], "question": "q", "response": {"steps": ["a"]',  # 5: truncated
            bench_record(response=None),  # 6: no response
            bench_record(steps=(), labels=()),  # 7: no steps
            bench_record(labels=(1, True)),  # 8: a boolean is not a label
            '"just a string"',  # 9
            {k: v for k, v in bench_record().items() if k != "policy_model"},  # 10: kept, default used
        ],
        images=("images/MMMU/1.png",),
    )
    ds, report = load_visualprocessbench(root, cache_dir=tmp_path / "cache")
    assert len(ds) == 2 and ds["id"] == ["test.jsonl:1", "test.jsonl:10"]
    assert ds[1]["policy_model"] == ""
    located = {str(issue) for issue in report.examples}
    assert "test.jsonl:2: field 'response.process_correctness': label count != step count (2 vs 3)" in located
    assert "test.jsonl:3: field 'response.process_correctness[1]': label not in {1, 0, -1} (2)" in located
    assert "test.jsonl:4: blank line" in located
    assert "test.jsonl:6: field 'response': missing required field (NoneType)" in located
    assert "test.jsonl:7: field 'response.steps': no steps" in located
    assert "test.jsonl:8: field 'response.process_correctness[1]': label not in {1, 0, -1} (True)" in located
    assert "test.jsonl:9: record is not a JSON object (str)" in located
    assert "test.jsonl:10: field 'policy_model': missing field (default used) (absent)" in located
    assert report.count(vpb.UNPARSEABLE) == 1
    assert report.actions[vpb.LENGTH_MISMATCH] == "skipped"
    assert "9 records read, 2 kept, 7 skipped" in report.summary()


def test_hub_layout_with_images_zip(tmp_path):
    """The Hub repo ships test.jsonl + images.zip: images resolve into the unpacked archive."""
    root = write_bench(tmp_path / "bench", [bench_record(image=("images/MMMU/1.png",))])
    with zipfile.ZipFile(root / "images.zip", "w") as zf:
        zf.writestr("images/MMMU/1.png", b"png")
    ds, report = load_visualprocessbench(root, cache_dir=tmp_path / "cache")
    image = Path(ds[0]["images"][0])
    assert image.is_file() and image.is_relative_to(tmp_path / "cache")
    assert report.count(vpb.IMAGE_MISSING) == 0


def test_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MPRMError, match="no test.jsonl"):
        load_visualprocessbench(tmp_path, cache_dir=tmp_path)
    with pytest.raises(MPRMError, match="no dev.jsonl"):
        load_visualprocessbench(REAL, split="dev", cache_dir=tmp_path)
    write_bench(tmp_path / "bad", ["[]", "{}"])
    with pytest.raises(MPRMError, match=r"no usable record \(2 problems; first problem: test.jsonl:1: "):
        load_visualprocessbench(tmp_path / "bad", cache_dir=tmp_path)
    with pytest.raises(MPRMError) as err:
        load_visualprocessbench("no-such-owner/no-such-bench-xyz", cache_dir=tmp_path)
    assert "\n" not in str(err.value) and str(err.value).startswith("no-such-owner/no-such-bench-xyz: ")


def test_synthetic_benchmark_matches_its_summary(synthetic_dir, tmp_path):
    ds, report = load_visualprocessbench(synthetic_dir / "VisualProcessBench", cache_dir=tmp_path)
    assert len(ds) == 120 and report.records_skipped == 0
    assert report.count(vpb.IMAGE_MISSING) == 0
    assert all(Path(p).is_absolute() and Path(p).is_file() for images in ds["images"] for p in images)
    labels = [label for row in ds["labels"] for label in row]
    assert set(labels) <= {1, 0, -1} and {1, -1} <= set(labels)
    assert sum(1 for n in ds["missing_images"] if n) == report.count(vpb.FEWER_IMAGES_THAN_TAGS)


def test_a_fatal_report_leads_with_the_reason_that_removed_the_records(tmp_path):
    """Only record: its image leaves the benchmark folder (fatal), and its answer is missing (benign)."""
    record = bench_record(image=("../../etc/passwd",))
    del record["answer"]
    write_bench(tmp_path / "bench", [record])
    with pytest.raises(MPRMError) as err:
        load_visualprocessbench(tmp_path / "bench", cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert (
        "no usable record (2 problems; first problem: test.jsonl:1: field 'image[0]': image path outside"
        in message
    )
    assert (
        message.index(vpb.IMAGE_OUTSIDE) < message.index("also noted: ") < message.index(vpb.MISSING_OPTIONAL)
    )
    assert "\n" not in message


def test_the_fatal_message_ranks_removing_reasons_before_notes():
    from mprm_hf.data.report import LoadReport

    report = LoadReport(name="x")
    report.add("f", 1, "answer", "missing field (default used)", action="kept")
    report.add("f", 1, "", "blank line", action="skipped")
    report.add("f", 2, "", "unparseable JSON line", action="skipped")
    report.add("f", 3, "", "unparseable JSON line", action="skipped")
    assert report.fatal("nothing left") == (
        "nothing left (4 problems; first problem: f:2: unparseable JSON line; "
        "also noted: f:1: field 'answer': missing field (default used))"
    )
