"""Property-based tests: valid files of every input format, corrupted at random (truncated lines, flipped
bytes, changed types, dropped fields, a byte-order mark, CRLF endings). Each reader must (1) raise nothing
but a one-line `MPRMError`, (2) account for every line (kept + skipped by reason = read), and (3) keep
from the untouched lines exactly what a clean parse of those lines keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mprm_hf.errors import MPRMError

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
OPERATIONS = ("none", "truncate", "flip", "string_score", "list_score", "drop_field", "bom", "crlf", "null")


def corrupt(line: bytes, operation: str, where: int, field: str) -> bytes:
    """One corruption of one line (never adds or removes a line terminator)."""
    if operation == "truncate":
        return line[: where % max(len(line), 1)]
    if operation == "flip":
        index = where % len(line)
        byte = line[index] ^ (1 + where % 127)
        return line[:index] + bytes([byte if byte not in (10, 13) else 33]) + line[index + 1 :]
    if operation == "string_score":
        return (
            line.replace(b'"score": 0', b'"score": "0', 1).replace(b', "', b'", "', 1)
            if b'"score": 0' in line
            else line
        )
    if operation == "list_score":
        return (
            line.replace(b'"score": ', b'"score": [', 1).replace(b"}", b"]}", 1)
            if b'"score": ' in line
            else line
        )
    if operation == "drop_field":
        record = json.loads(line)
        record.pop(field, None)
        return json.dumps(record).encode()
    if operation == "bom":
        return b"\xef\xbb\xbf" + line
    if operation == "null":
        record = json.loads(line)
        record[field] = None
        return json.dumps(record).encode()
    return line


corruptions = st.lists(
    st.tuples(st.sampled_from(OPERATIONS), st.integers(0, 10_000)), min_size=1, max_size=12
)


def _write(path: Path, lines: list[bytes], plan: list[tuple[str, int]], field: str) -> list[bool]:
    """Write the corrupted file; return which lines are untouched."""
    out, clean = [], []
    for index, line in enumerate(lines):
        operation, where = plan[index % len(plan)]
        out.append(corrupt(line, operation, where, field) + (b"\r\n" if operation == "crlf" else b"\n"))
        clean.append(operation in ("none", "crlf") or out[-1].rstrip(b"\r\n") == line)
    path.write_bytes(b"".join(out))
    return clean


def _one_line(error: MPRMError) -> None:
    assert "\n" not in str(error) and str(error)


# --------------------------------------------------------------------------------- VisualPRM400K scan
@pytest.fixture(scope="module")
def rollout_lines(synthetic_dir: Path) -> list[bytes]:
    first = sorted((synthetic_dir / "annotations").glob("*.jsonl"))[0]
    return first.read_bytes().splitlines()[:12]


@SETTINGS
@given(plan=corruptions, field=st.sampled_from(["steps_with_score", "image", "question"]))
def test_the_scan_accounts_for_every_line(rollout_lines, tmp_path_factory, plan, field) -> None:
    from mprm_hf.selection.scan import scan_corpus

    folder = tmp_path_factory.mktemp("scan")
    clean_folder = tmp_path_factory.mktemp("clean")
    (clean_folder / "a.jsonl").write_bytes(b"\n".join(rollout_lines) + b"\n")
    untouched = _write(folder / "a.jsonl", rollout_lines, plan, field)
    try:
        table = scan_corpus(folder, use_cache=False, progress=False, num_proc=1)
    except MPRMError as error:  # where the reference itself would crash (bytes that are not UTF-8, ...)
        _one_line(error)
        return
    counts = table.counts[0]
    assert counts.ranked + counts.n_skipped == len(rollout_lines)
    clean = scan_corpus(clean_folder, use_cache=False, progress=False, num_proc=1).table.to_pylist()
    rows = {row["line"]: row for row in table.table.to_pylist()}
    for number, kept in enumerate(untouched, start=1):
        if kept:
            expected = {k: v for k, v in clean[number - 1].items() if k not in ("offset",)}
            assert {k: v for k, v in rows[number].items() if k not in ("offset",)} == expected


# ------------------------------------------------------------------------------ VisualProcessBench
@pytest.fixture(scope="module")
def bench_lines(synthetic_dir: Path) -> list[bytes]:
    return (synthetic_dir / "VisualProcessBench" / "test.jsonl").read_bytes().splitlines()[:10]


@SETTINGS
@given(plan=corruptions, field=st.sampled_from(["response", "question", "image", "data_source"]))
def test_the_benchmark_loader_accounts_for_every_line(
    bench_lines, synthetic_dir, tmp_path_factory, plan, field
):
    from mprm_hf.data.visualprocessbench import BLANK, load_visualprocessbench

    folder = tmp_path_factory.mktemp("bench")
    (folder / "images").symlink_to((synthetic_dir / "VisualProcessBench" / "images").resolve())
    untouched = _write(folder / "test.jsonl", bench_lines, plan, field)
    try:
        ds, report = load_visualprocessbench(folder)
    except MPRMError as error:  # nothing usable left
        _one_line(error)
        return
    assert report.records_read + report.count(BLANK) == len(bench_lines)  # a cut at 0 leaves a blank line
    assert report.records_kept == len(ds) and len(ds) + report.records_skipped + report.count(BLANK) == len(
        bench_lines
    )
    clean_folder = tmp_path_factory.mktemp("bench_clean")
    (clean_folder / "images").symlink_to((synthetic_dir / "VisualProcessBench" / "images").resolve())
    (clean_folder / "test.jsonl").write_bytes(b"\n".join(bench_lines) + b"\n")
    clean, _ = load_visualprocessbench(clean_folder)
    by_line = {row["line"]: row for row in ds}
    for row in clean:
        if untouched[row["line"] - 1]:
            got = by_line[row["line"]]
            assert (got["steps"], got["labels"], got["question"]) == (
                row["steps"],
                row["labels"],
                row["question"],
            )


# ---------------------------------------------------------------------------------- stepwise jsonl
STEPWISE = [
    json.dumps(
        {
            "id": f"r{n}",
            "prompt": f"q{n}",
            "completions": ["a", "b"],
            "labels": [True, n % 2 == 0],
            "mc_scores": [0.5, 0.0],
        }
    ).encode()  # fmt: skip
    for n in range(8)
]


@SETTINGS
@given(plan=corruptions, field=st.sampled_from(["labels", "completions", "prompt", "mc_scores"]))
def test_stepwise_jsonl_is_read_whole_or_refused_in_one_line(tmp_path_factory, plan, field) -> None:
    from mprm_hf.data.stepwise import load_stepwise

    path = tmp_path_factory.mktemp("stepwise") / "records.jsonl"
    untouched = _write(path, STEPWISE, plan, field)
    try:
        ds = load_stepwise(path)
    except MPRMError as error:
        _one_line(error)
        assert str(error).startswith(str(path))
        return
    written = [line for line in path.read_bytes().splitlines() if line.strip()]
    assert len(ds) == len(written)  # read whole (a blank line holds no record) or not at all
    by_id = {row["id"]: row for row in ds}
    for index, kept in enumerate(untouched):
        if kept:
            clean = json.loads(STEPWISE[index])
            assert (by_id[clean["id"]]["prompt"], by_id[clean["id"]]["labels"]) == (
                clean["prompt"],
                clean["labels"],
            )
