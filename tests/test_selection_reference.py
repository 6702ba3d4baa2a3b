"""`--format reference` writes the same bytes as the reference BIS builder, on corpora built to break it.

The oracle below is a plain per-line implementation of the rules of docs/definitions.md#selection, one record at a time, with
Python's `json`, `float()` and `sum()`: what the reference does. The fast path (orjson, shards, a
cached score table, vectorised BIS) must agree with it byte for byte."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from mprm_hf.data import rollout as rules
from mprm_hf.errors import MPRMError
from mprm_hf.selection import scan, scores, subset

ALPHAS = [0.0, 0.05, 0.2, 1.0, 1e-300]
RATIOS = [0.001, 0.1, 0.25, 1 / 3, 0.5, 1.0]


# ------------------------------------------------------------------------------------------ oracle
def oracle_subset(annotations_dir: Path, alpha: float, top_ratio: float) -> bytes:
    """docs/definitions.md#selection, line by line, the slow obvious way."""
    written: list[str] = []
    for path in sorted(annotations_dir.glob("*.jsonl")):
        with path.open("r", encoding="utf-8") as handle:
            lines = handle.readlines()
        ranked: list[tuple[int, float]] = []
        for index, line in enumerate(lines):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            scores = []
            for step in record.get("steps_with_score") or []:
                value = step.get("score")
                if value is None:
                    continue
                try:
                    scores.append(float(value))
                except (TypeError, ValueError):
                    continue
            if not scores:
                continue
            positives = [score for score in scores if score > 0.0]
            p_pos = len(positives) / len(scores)
            reliability = sum(positives) / len(positives) if positives else 1.0
            ranked.append((index, (p_pos * (1.0 - p_pos) + alpha) * reliability))
        if not ranked:
            continue
        ranked.sort(key=lambda pair: pair[1], reverse=True)
        top_k = max(1, int(len(ranked) * top_ratio))
        for index in sorted(index for index, _ in ranked[:top_k]):
            record = json.loads(lines[index].strip())
            converted = oracle_convert(record)
            if converted is not None:
                written.append(json.dumps(converted, ensure_ascii=False) + "\n")
    return "".join(written).encode("utf-8")


def oracle_convert(record: dict) -> dict | None:
    image = record.get("image", "")
    steps = record.get("steps_with_score") or []
    if not image or not steps:
        return None
    texts, labels = [], []
    for step in steps:
        text = (step.get("step") or "").strip()
        value = step.get("score")
        if not text or value is None:
            return None
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        texts.append(text + "<prm>")
        labels.append(1.0 if value > 0.0 else 0.0)
    question = str(record.get("question_orig") or record.get("question") or "").strip()
    human = {"from": "human", "value": f"Question: {question}\nProcess: " + "\n\n".join(texts)}
    return {"image": image, "conversations": [human, {"from": "gpt", "value": labels}]}


# ------------------------------------------------------------------------------- adversarial corpus
SCORES = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0625, 0.5, 0.9375, 0.1, 0.2, 0.3, 0.7, 1e-17, 5e-324, -0.0, -0.25, 1, 0, True,
          False, "0.5", " 0.25 ", "abc", "", None, [0.5], {"x": 1}, "nan", "1_0"]  # fmt: skip
TEXTS = ["Compute the area.", "  padded step  ", "", "   ", None, 0, "multi\nline \"quoted\" \\ back",
         "accents éß and emoji 😀", "tab\tand\u2028separator", "ctrl \x01 char"]  # fmt: skip
IMAGES = ["VisualPRM400K-v1.1-Raw/src/00001.png", "", [], ["a/1.png", "b/2.png"], None, "ünïcode/å.png"]
QUESTIONS = [
    {"question_orig": "  What is x?  ", "question": "<image>\nWhat is x? Think step by step."},
    {"question": "  only question  "},
    {"question_orig": "", "question": "fallback"},
    {"question_orig": 0, "question": "zero orig"},
    {},
    {"question_orig": 7},
    {"question_orig": ["a", 1.5]},
]


def _record(rnd: random.Random) -> dict:
    kind = rnd.random()
    n_steps = rnd.choice([0, 1, 1, 2, 3, 4, 5, 8, 12, 16])
    steps = []
    for _ in range(n_steps):
        if kind < 0.25:  # all-negative: every one ties at BIS = alpha
            score = 0.0
        elif kind < 0.4:  # all-positive at 1.0: ties at alpha
            score = 1.0
        elif kind < 0.55:  # near-ties: the sum's rounding decides the order
            score = rnd.choice([0.1, 0.2, 0.3, 0.7, 0.6])
        else:
            score = rnd.choice(SCORES)
        step = {
            "step": rnd.choice(TEXTS) if rnd.random() < 0.2 else f"Step about {rnd.randint(0, 9)}.",
            "score": score,
        }
        if rnd.random() < 0.05:
            del step["score"]
        if rnd.random() < 0.03:
            del step["step"]
        step["num_mc_correct"], step["num_mc_total"] = rnd.randint(0, 16), 16
        steps.append(step)
    record = {"image": rnd.choice(IMAGES) if rnd.random() < 0.3 else IMAGES[0], **rnd.choice(QUESTIONS)}
    if rnd.random() < 0.05:
        del record["image"]
    record["answer"] = "52"
    record["steps_with_score"] = steps if rnd.random() > 0.03 else rnd.choice([None, [], 0, ""])
    record["num_mc_sequences"] = 16
    return record


def _line(rnd: random.Random) -> str:
    roll = rnd.random()
    if roll < 0.04:
        return rnd.choice(
            [
                "",
                "   ",
                "\t",
                "\u00a0",
                "garbage",
                "{",
                "[1, 2",
                '{"image": "x", "steps_with_score": [{"step"',
            ]
        )
    text = json.dumps(_record(rnd), ensure_ascii=rnd.random() < 0.5)
    if roll < 0.08:  # truncated
        return text[: rnd.randint(1, len(text) - 1)]
    if roll < 0.10:  # non-finite literals, which json accepts and orjson does not
        text = text.replace('"score": 0.5', '"score": NaN', 1).replace('"score": 0.1', '"score": Infinity', 1)
    if roll < 0.12:  # integers beyond 64 bits, which orjson widens to floats
        text = text.replace('"num_mc_sequences": 16', '"num_mc_sequences": 123456789012345678901234567890')
        text = text.replace('"score": 1,', '"score": 18446744073709551617,', 1)
        text = text.replace('"question_orig": 7', '"question_orig": 98765432109876543210987', 1)
    if roll < 0.13:  # Unicode whitespace around a record: str.strip() removes it, bytes.strip() does not
        text = "\u3000" + text + "\u00a0"
    if roll < 0.14:  # a lone surrogate escape in a text that is never written
        text = text.replace('"answer": "52"', '"answer": "\\ud800"')
    return text


def write_corpus(
    folder: Path,
    seed: int,
    lines_per_file: tuple[int, ...] = (160, 120, 90, 1, 0),
    *,
    newline_only: bool = False,
) -> Path:
    """Several files (names chosen to sort by code point), mixed line terminators (or `\\n` only, which
    the scan's fast path reads), an ignored .txt."""
    rnd = random.Random(seed)
    annotations = folder / "annotations"
    annotations.mkdir(parents=True)
    names = ["b_source.jsonl", "B_upper.jsonl", "a-source.jsonl", "single.jsonl", "empty.jsonl"]
    for name, count in zip(names, lines_per_file, strict=True):
        parts = []
        for _ in range(count):
            parts.append(_line(rnd))
            parts.append("\n" if newline_only else rnd.choice(["\n"] * 8 + ["\r\n", "\r"]))
        if parts and rnd.random() < 0.5:
            parts.pop()  # no final newline
        (annotations / name).write_bytes("".join(parts).encode("utf-8"))
    (annotations / "notes.txt").write_text("not an annotation file\n")
    return annotations


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return [write_corpus(tmp_path_factory.mktemp(f"corpus{seed}"), seed) for seed in range(3)]


# ----------------------------------------------------------------------------------------- tests
def test_oracle_sees_the_hard_cases(corpora: list[Path]) -> None:
    """The corpora really hold ties, NaN/Infinity, widened integers and drops, so equality means something."""
    text = "".join(path.read_bytes().decode("utf-8") for corpus in corpora for path in corpus.glob("*.jsonl"))
    for needle in (
        "NaN",
        "Infinity",
        "18446744073709551617",
        "\\ud800",
        "\u3000",
        "\r\n",
        '"score": "abc"',
        '"image": ""',
    ):
        assert needle in text, needle
    ties = oracle_subset(corpora[0], 0.05, 0.5)
    assert ties.count(b"\n") > 30


@pytest.mark.parametrize("corpus_index", [0, 1, 2])
def test_reference_format_is_byte_identical(corpora: list[Path], corpus_index: int, tmp_path: Path) -> None:
    annotations = corpora[corpus_index]
    cache = tmp_path / "cache"
    for run, alpha in enumerate(ALPHAS):
        for ratio in RATIOS:
            expected = oracle_subset(annotations, alpha, ratio)
            output = tmp_path / f"out_{alpha}_{ratio}.jsonl"
            result = subset.build_reference_subset(
                annotations, output, alpha=alpha, top_ratio=ratio, num_proc=1 + corpus_index % 2,
                cache_dir=cache, progress=False, shard_bytes=4096,
            )  # fmt: skip
            assert output.read_bytes() == expected, (alpha, ratio)
            assert result.n_written == expected.count(b"\n")
            assert result.cached == (run > 0 or ratio != RATIOS[0])


def _count_plain_shards(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, per shard, whether the whole-shard msgspec read served it (in this process)."""
    served: list[bool] = []
    plain = scan._scan_plain_shard

    def counting(*args: object) -> object:
        values = plain(*args)
        served.append(values is not None)
        return values

    monkeypatch.setattr(scan, "_scan_plain_shard", counting)
    return served


@pytest.mark.parametrize("seed", [10, 11])
def test_score_only_scan_is_byte_identical(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a records cache the scan reads only scores with msgspec, a whole shard at once when
    every line is plain, else line by line; on `\\n`-only adversarial corpora (where both happen) it
    must match the oracle."""
    annotations = write_corpus(tmp_path / "corpus", seed, newline_only=True)
    served = _count_plain_shards(monkeypatch)
    for alpha in ALPHAS:
        for ratio in RATIOS:
            output = tmp_path / "out.jsonl"
            subset.build_reference_subset(
                annotations, output, alpha=alpha, top_ratio=ratio, num_proc=1, use_cache=False,
                progress=False, shard_bytes=2048,
            )  # fmt: skip
            assert output.read_bytes() == oracle_subset(annotations, alpha, ratio), (alpha, ratio)
    assert any(served) and not all(served)


def test_score_only_scan_matches_the_oracle_on_the_synthetic_world(
    synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clean corpus is read a whole shard at once, every shard."""
    annotations = Path(synthetic_dir) / "annotations"
    served = _count_plain_shards(monkeypatch)
    for alpha, ratio in [(0.05, 0.1), (0.2, 0.25), (0.0, 1 / 3), (1.0, 0.5)]:
        output = tmp_path / "out.jsonl"
        subset.build_reference_subset(
            annotations, output, alpha=alpha, top_ratio=ratio, num_proc=1, use_cache=False, progress=False,
            shard_bytes=65536,
        )  # fmt: skip
        assert output.read_bytes() == oracle_subset(annotations, alpha, ratio), (alpha, ratio)
    assert served and all(served)


@pytest.mark.parametrize(
    "shard",
    [
        b'{"steps_with_score": [{"score": 1}]} {"steps_with_score": [{"score": 1}]}\n',  # two values, one line
        b'{"steps_with_score": [{"score": 1}]}\n   \n',  # a blank line
        b'{"steps_with_score": [{"score": 1}]}\n\n',  # an empty line
        b' {"steps_with_score": [{"score": 1}]}\n',  # whitespace str.strip() would remove
        b'{"steps_with_score": [{"score": null}]}\n',  # a null score is skipped, not counted
        b'{"steps_with_score": [{"score": "0.5"}]}\n',  # float("0.5") semantics
        b'{"steps_with_score": [{"score": 1, "n": ' + b"7" * 4301 + b"}]}\n",  # over the integer limit
    ],
)
def test_plain_shard_read_declines_unusual_shards(shard: bytes) -> None:
    """Each of these must go line by line (the whole-shard read returns None and records nothing)."""
    out = scan.ShardScan(0, 0)
    assert scan._scan_plain_shard(shard, 0, len(shard), out) is None
    assert out.offsets == [] and out.skipped == {}


def test_plain_shard_read_reads_a_plain_shard() -> None:
    shard = b'{"steps_with_score": [{"score": 1}, {"score": 0.25}]}\n{"steps_with_score": []}\n{"x": 1}'
    out = scan.ShardScan(0, 100)
    values = scan._scan_plain_shard(b"\n" * 100 + shard, 100, 100 + len(shard), out)
    assert values.tolist() == [1.0, 0.25] and list(out.offsets) == [100] and list(out.n_scored) == [2]
    assert list(out.lengths) == [shard.index(b"\n")] and out.skipped == {rules.NO_NUMERIC_SCORE: 2}
    assert (
        list(out.lines) == [0]
        and out.n_lines == 3
        and out.examples == [(rules.NO_NUMERIC_SCORE, 1), (rules.NO_NUMERIC_SCORE, 2)]
    )


@pytest.mark.parametrize(
    "bad_value",
    [b'"\xff"', b"1" + b"0" * 5000],
    ids=["invalid-utf8-in-an-unread-field", "integer-over-digit-limit"],
)
def test_unread_fields_still_crash_as_the_reference(tmp_path: Path, bad_value: bytes) -> None:
    """msgspec skips fields it does not read without decoding them: the reference still fails on them,
    even when that line is not kept (it ties with line 1, which the 50% budget keeps)."""
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    good = b'{"image": "a", "steps_with_score": [{"step": "s", "score": 1}]}\n'
    (annotations / "x.jsonl").write_bytes(
        good
        + b'{"image": "a", "answer": '
        + bad_value
        + b', "steps_with_score": [{"step": "s", "score": 1}]}\n'
    )
    with pytest.raises(MPRMError, match=r"x\.jsonl:2: (not valid UTF-8|cannot be parsed as JSON)"):
        subset.build_reference_subset(
            annotations, tmp_path / "o.jsonl", alpha=0.1, top_ratio=0.5, cache_dir=tmp_path / "cache", progress=False,
        )  # fmt: skip


def test_msgspec_rejects_what_json_rejects() -> None:
    """The score decoder may only reject more than `json.loads`, never less (else a line the reference
    skips as invalid would be ranked)."""
    rejected_by_json = [b'{"a":1,}', b'{"a":[1,]}', b"{'a':1}", b'{"a":1 "b":2}', b'{"a":.5}', b'{"a":+1}',
        b'{"a":0x10}', b'{"a":"\x1f"}', b'{"a":"\\q"}', b'{"a":"\\u12"}', b'{"a":tru}', b'{"a":True}',
        b'{"a":[1 2]}', b'{"a":"x', b'{"a":1}x', b"", b'{"a":-}', b'{"a":1e}', b'{"a":-01}', b'{"a"}',
        b'{"a":1}}', b'{"a":\x0b1}', b'{"a":"\t"}', b'{"a":[1]]}', b"{}{}", b"[1]"]  # fmt: skip
    for text in rejected_by_json:
        try:
            json.loads(text.decode())
        except json.JSONDecodeError:
            pass
        else:
            assert text == b"[1]"  # JSON, but not an object: the reference crashes, the careful path says so
        with pytest.raises(rules.DECODE_ERRORS):
            rules.decode_steps(text)
    duplicate = b'{"steps_with_score": [{"score": 1, "score": 2}], "steps_with_score": [{"score": 3}]}'
    assert [step.score for step in rules.decode_steps(duplicate)] == [3.0]  # last wins


def test_msgspec_floats_are_python_floats() -> None:
    """Correctly rounded like float(): random 17-digit, long, subnormal and huge-integer literals."""
    rnd = random.Random(0)
    literals = ["0.1", "1e-320", "4.9406564584124654e-324", "2.2250738585072011e-308", "9007199254740993",
                "18446744073709551617", "0.30000000000000004", "1.7976931348623157e308"]  # fmt: skip
    for _ in range(20000):
        literals.append(repr(rnd.random()))
        digits, value = rnd.randint(0, 25), rnd.uniform(-1, 1) * 10.0 ** rnd.randint(-320, 300)
        literals.append(f"{value:.{digits}e}")
        literals.append("0." + "".join(rnd.choice("0123456789") for _ in range(rnd.randint(1, 40))))
        literals.append(str(rnd.randint(-(2**80), 2**80)))
    for literal in literals:
        decoded = rules.decode_steps(b'{"steps_with_score": [{"score": %s}]}' % literal.encode())
        assert decoded[0].score.hex() == float(json.loads(literal)).hex(), literal


def test_near_ties_follow_python_sum_order(tmp_path: Path) -> None:
    """0.1+0.2+0.3 != 0.3+0.2+0.1 in floats: the kept rollout must be the one Python's sum ranks first."""
    assert (0.1 + 0.2) + 0.3 != (0.3 + 0.2) + 0.1
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    orders = [[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.2, 0.3, 0.1], [0.3, 0.1, 0.2]]
    lines = []
    for number, order in enumerate(orders):
        steps = [{"step": f"s{i}", "score": score} for i, score in enumerate(order)] + [
            {"step": "neg", "score": 0.0}
        ]
        lines.append(json.dumps({"image": f"{number}.png", "question": "q", "steps_with_score": steps}))
    (annotations / "near.jsonl").write_text("\n".join(lines) + "\n")
    for ratio in (0.25, 0.5, 0.75):
        output = tmp_path / "out.jsonl"
        subset.build_reference_subset(
            annotations, output, alpha=0.05, top_ratio=ratio, use_cache=False, progress=False
        )
        assert output.read_bytes() == oracle_subset(annotations, 0.05, ratio)


def test_nan_bis_uses_python_sort(tmp_path: Path) -> None:
    """An infinite score with alpha 0 on an all-positive rollout gives BIS = 0 * inf = NaN."""
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    lines = []
    for number in range(12):
        score = "inf" if number % 3 == 0 else [0.5, 0.0, 1.0][number % 3]
        steps = [{"step": "a", "score": score}, {"step": "b", "score": 0.25 if number % 2 else 0.0}]
        lines.append(json.dumps({"image": f"{number}.png", "question": "q", "steps_with_score": steps}))
    (annotations / "nan.jsonl").write_text("\n".join(lines))
    bis = scores.bis(np.array([2] * 3), np.array([2, 1, 0]), np.array([math.inf, 0.5, 0.0]), 0.0)
    assert math.isnan(bis[0])
    for ratio in (0.25, 0.5):
        output = tmp_path / "out.jsonl"
        subset.build_reference_subset(
            annotations, output, alpha=0.0, top_ratio=ratio, use_cache=False, progress=False
        )
        assert output.read_bytes() == oracle_subset(annotations, 0.0, ratio)


def test_cli_reference_format_matches_oracle(corpora: list[Path], tmp_path: Path, monkeypatch) -> None:
    from mprm_hf.cli import main

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    output = tmp_path / "cli.jsonl"
    argv = ["select", "--annotations", str(corpora[1]), "--method", "bis", "--alpha", "0.2", "--top-ratio", "0.1",
            "--format", "reference", "--output", str(output)]  # fmt: skip
    assert main(argv) == 0
    assert output.read_bytes() == oracle_subset(corpora[1], 0.2, 0.1)
    assert len(list((tmp_path / "hf_cache").glob("mprm_hf_scores/*/*.arrow"))) == 1
    argv[argv.index("0.1")] = "0.25"
    for _ in range(2):  # from the score table: the kept lines are converted each time
        assert main(argv) == 0
        assert output.read_bytes() == oracle_subset(corpora[1], 0.2, 0.25)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 2]", "must be a JSON object"),
        ('{"steps_with_score": "text"}', "field 'steps_with_score' must be a list"),
        ('{"steps_with_score": [1]}', "field 'steps_with_score[0]' must be an object"),
    ],
)
def test_records_the_reference_would_crash_on_are_one_line_errors(
    tmp_path: Path, line: str, message: str
) -> None:
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "bad.jsonl").write_text(
        '{"image": "a", "steps_with_score": [{"step": "s", "score": 1}]}\n\n' + line
    )
    with pytest.raises(MPRMError, match=rf"bad\.jsonl:3: .*{re.escape(message)}") as caught:
        subset.build_reference_subset(
            annotations, tmp_path / "o.jsonl", alpha=0.1, top_ratio=0.5, use_cache=False, progress=False
        )
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "o.jsonl").exists()


def test_invalid_utf8_is_an_error(tmp_path: Path) -> None:
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "x.jsonl").write_bytes(
        b'{"image": "a", "steps_with_score": [{"step": "\xff", "score": 1}]}\n'
    )
    with pytest.raises(MPRMError, match=r"x\.jsonl:1: not valid UTF-8"):
        subset.build_reference_subset(
            annotations, tmp_path / "o.jsonl", alpha=0.1, top_ratio=0.5, use_cache=False, progress=False
        )


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan")])
def test_bad_ratio_is_rejected(corpora: list[Path], tmp_path: Path, ratio: float) -> None:
    with pytest.raises(MPRMError, match="--top-ratio"):
        subset.build_reference_subset(
            corpora[0], tmp_path / "o.jsonl", alpha=0.1, top_ratio=ratio, use_cache=False
        )


def test_missing_folder_and_no_files(tmp_path: Path) -> None:
    with pytest.raises(MPRMError, match="annotations folder not found"):
        scan.annotation_files(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MPRMError, match=r"no \*\.jsonl annotation files"):
        scan.annotation_files(tmp_path / "empty")


def test_a_conversion_crash_matters_only_when_kept(tmp_path: Path) -> None:
    """A step text that is a number crashes the reference's converter, but only for a kept rollout."""
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    good = {
        "image": "a.png",
        "question": "q",
        "steps_with_score": [{"step": "s", "score": 0.5}, {"step": "t", "score": 0.0}],
    }
    bad = {
        "image": "b.png",
        "question": "q",
        "steps_with_score": [{"step": 7, "score": 1.0}],
    }  # BIS = alpha: last
    (annotations / "x.jsonl").write_text("\n".join(json.dumps(record) for record in [good, good, bad]) + "\n")
    options = {
        "alpha": 0.05,
        "cache_dir": tmp_path / "cache",
        "progress": False,
    }
    subset.build_reference_subset(annotations, tmp_path / "o.jsonl", top_ratio=0.5, **options)
    assert (tmp_path / "o.jsonl").read_bytes() == oracle_subset(annotations, 0.05, 0.5)
    with pytest.raises(MPRMError, match=r"x\.jsonl:3: field 'steps_with_score\[0\]\.step' must be a string"):
        subset.build_reference_subset(annotations, tmp_path / "o2.jsonl", top_ratio=1.0, **options)
    assert not (tmp_path / "o2.jsonl").exists()


def test_cache_follows_the_files(tmp_path: Path) -> None:
    """An edited annotation file is scanned again; an unchanged corpus is not; the table loads in datasets."""
    import datasets

    annotations = write_corpus(tmp_path / "corpus", seed=7, lines_per_file=(40, 30, 0, 1, 5))
    options = {"alpha": 0.2, "top_ratio": 0.25, "cache_dir": tmp_path / "cache", "progress": False}
    first = subset.build_reference_subset(annotations, tmp_path / "a.jsonl", **options)
    again = subset.build_reference_subset(annotations, tmp_path / "b.jsonl", **options)
    assert (first.cached, again.cached) == (False, True)
    with (annotations / "b_source.jsonl").open("a", encoding="utf-8") as handle:
        steps = [{"step": "new", "score": 0.5}, {"step": "n2", "score": 0.0}]
        handle.write(
            "\n" + json.dumps({"image": "new.png", "question": "q", "steps_with_score": steps}) + "\n"
        )
    edited = subset.build_reference_subset(annotations, tmp_path / "c.jsonl", **options)
    assert not edited.cached
    assert (tmp_path / "c.jsonl").read_bytes() == oracle_subset(annotations, 0.2, 0.25)
    tables = sorted((tmp_path / "cache").glob("*/*.arrow"))
    assert tables == [edited.scores.path]  # the stale table of this corpus was pruned
    assert datasets.Dataset.from_file(str(tables[0])).num_rows == len(edited.scores)
    assert edited.scores.dataset().num_rows == len(edited.scores)


def test_a_sweep_through_the_public_api_reads_the_corpus_once(tmp_path: Path) -> None:
    """`mprm_hf.build_reference_subset`: the first alpha scans, every later alpha and ratio comes from
    the cached score table, and each output is the reference's."""
    import mprm_hf

    annotations = write_corpus(tmp_path / "corpus", seed=11, lines_per_file=(60, 45, 0, 3, 20))
    sweep = [(0.05, 0.1), (0.2, 0.1), (0.2, 0.5), (1.0, 0.25)]
    for step, (alpha, ratio) in enumerate(sweep):
        output = tmp_path / f"alpha{alpha}_ratio{ratio}.jsonl"
        result = mprm_hf.build_reference_subset(
            annotations, output, alpha=alpha, top_ratio=ratio, cache_dir=tmp_path / "cache", progress=False,
        )  # fmt: skip
        assert result.cached == (step > 0)
        assert output.read_bytes() == oracle_subset(annotations, alpha, ratio)
        assert result.n_written == output.read_bytes().count(b"\n")


def test_orjson_and_json_agree_on_every_float_both_accept() -> None:
    """The fast path trusts orjson's floats: on literals both parsers accept, the values are identical."""
    import struct

    import orjson

    rnd = random.Random(0)
    literals = []
    for _ in range(20_000):
        kind = rnd.random()
        if kind < 0.4:
            literal = repr(struct.unpack("d", struct.pack("Q", rnd.getrandbits(64)))[0])
            if "n" in literal:  # nan / inf have no JSON literal orjson accepts
                continue
        elif kind < 0.7:
            literal = f"{rnd.randint(0, 10**20)}.{rnd.randint(0, 10**25):025d}e{rnd.randint(-330, 310)}"
        else:
            literal = "0." + "".join(rnd.choice("0123456789") for _ in range(rnd.randint(15, 40)))
        literals.append(literal)
    compared = 0
    for literal in literals:
        text = '{"score": ' + literal + "}"
        try:
            fast = orjson.loads(text.encode())["score"]
        except orjson.JSONDecodeError:
            continue  # falls back to json: nothing to compare
        assert repr(fast) == repr(json.loads(text)["score"]), literal
        compared += 1
    assert compared > 15_000


def test_orjson_writes_strings_as_json_dumps_does() -> None:
    """The scan writes PRM lines with `orjson.dumps(str)`: it must equal `json.dumps(str, ensure_ascii=False)`
    (`encode_basestring`) encoded as UTF-8, for every code point a parsed string can hold and mixtures."""
    from json.encoder import encode_basestring

    import orjson

    every = [chr(code) for code in range(0x110000) if not 0xD800 <= code <= 0xDFFF]
    assert all(orjson.dumps(char) == encode_basestring(char).encode("utf-8") for char in every)
    rnd = random.Random(0)
    pool = [chr(code) for code in range(0x80)] + ["\u2028", "\u2029", "\u00e9", "\U0001f600", "\ufeff"]
    for _ in range(2000):
        text = "".join(rnd.choice(pool) for _ in range(rnd.randint(0, 40)))
        assert orjson.dumps(text) == encode_basestring(text).encode("utf-8"), text


def test_top_k_positions_is_the_stable_sort_prefix() -> None:
    """The partition-based top-k keeps exactly what a stable descending sort keeps, ties and -0.0 included."""
    rnd = np.random.default_rng(0)
    for trial in range(300):
        size = int(rnd.integers(1, 60))
        values = rnd.choice([0.0, -0.0, 0.05, 0.25, 0.3, 1.0, 1e-300], size=size)
        if trial % 3 == 0:
            values = values + rnd.normal(size=size) * (trial % 2)
        for top_k in {1, size // 3 or 1, size // 2 or 1, size}:
            expected = np.sort(np.argsort(-values, kind="stable")[:top_k])
            assert scores.top_positions(values, top_k).tolist() == expected.tolist()


@pytest.mark.parametrize("use_cache", [False, True])
def test_a_score_too_large_for_a_float_is_a_located_error(tmp_path: Path, use_cache: bool) -> None:
    """float() of a 400-digit integer overflows, where the reference crashes: one line, file, line, field."""
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    good = {"image": "a.png", "question": "q", "steps_with_score": [{"step": "s", "score": 0.5}]}
    huge = (
        '{"image": "b.png", "question": "q", "steps_with_score": [{"step": "s", "score": 1'
        + "0" * 400
        + "}]}"
    )
    (annotations / "src.jsonl").write_text(json.dumps(good) + "\n" + huge + "\n", encoding="utf-8")
    output = tmp_path / "out.jsonl"
    with pytest.raises(MPRMError) as error:
        subset.build_reference_subset(
            annotations,
            output,
            alpha=0.2,
            top_ratio=1.0,
            num_proc=1,
            use_cache=use_cache,
            cache_dir=tmp_path / "cache",
        )
    message = str(error.value)
    assert "src.jsonl:2" in message and "steps_with_score[0].score" in message and "too large" in message
    assert "\n" not in message
    assert not output.exists()


# ------------------------------------------------------------------ typed (msgspec) conversion path
def _plain_record(rnd: random.Random) -> dict:
    """A record of the common shape (what the typed decoder reads), with the values where its
    conversion must still agree with the reference: list and empty images, blank or null step texts,
    null and integer scores, question fallbacks, escapes and non-ASCII text."""
    text = rnd.choice(
        ["step", " padded step\t", "é ü 你好 😀", 'quote " and \\ back', "line\nbreak", "\u2028sep", ""]
    )
    steps = []
    for _ in range(rnd.randint(0, 5)):
        step: dict = {
            "step": rnd.choice([text, "plain", "plain", "  ", None]),
            "score": rnd.choice([0.0, 0.25, 1, 0, 0.5, 1e-999, -0.0] * 5 + [None]),
        }
        if rnd.random() < 0.1:
            del step["step"]
        steps.append(step)
    record: dict = {
        "image": rnd.choice(["a.png", "b.png", ["x.png", "y.png"], [], ""]),
        "steps_with_score": steps,
    }
    record.update(
        rnd.choice(
            [
                {"question": "q?"},
                {"question_orig": " orig ", "question": "q"},
                {"question_orig": "", "question": "q2"},
                {},
            ]
        )
    )
    if rnd.random() < 0.3:
        record["response"] = "skipped " * rnd.randint(0, 20)
    return record


@pytest.mark.parametrize("num_proc", [1, 2])
def test_typed_conversion_matches_the_oracle(tmp_path: Path, num_proc: int, monkeypatch) -> None:
    """Kept lines are converted from one msgspec call per chunk; a chunk msgspec cannot type goes line
    by line, and a line it cannot type rule by rule. Every route must give the oracle's bytes."""
    rnd = random.Random(7)
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    for name in ("a", "b", "c"):
        lines = [
            json.dumps(_plain_record(rnd), ensure_ascii=rnd.random() < 0.5)
            for _ in range(rnd.randint(40, 160))
        ]
        (annotations / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with (annotations / "c.jsonl").open("a", encoding="utf-8") as handle:  # a chunk msgspec cannot type
        handle.write('{"image": "t.png", "steps_with_score": [{"step": "s", "score": true}]}\n')
    typed, careful = [], []
    typed_rule, careful_rule = rules._typed_rollout, rules.record_rollout
    monkeypatch.setattr(rules, "_typed_rollout", lambda *a: typed.append(1) or typed_rule(*a))
    monkeypatch.setattr(rules, "record_rollout", lambda *a: careful.append(1) or careful_rule(*a))
    monkeypatch.setattr(scan, "CHUNK_ROWS", 37)
    served = _count_plain_shards(monkeypatch)
    for alpha in ALPHAS[:3]:
        for ratio in RATIOS:
            output = tmp_path / "out.jsonl"
            subset.build_reference_subset(
                annotations, output, alpha=alpha, top_ratio=ratio, num_proc=num_proc, use_cache=True,
                cache_dir=tmp_path / "cache", progress=False, shard_bytes=2048,
            )  # fmt: skip
            assert output.read_bytes() == oracle_subset(annotations, alpha, ratio), (alpha, ratio)
    if num_proc == 1:  # the counters see this process only
        assert typed and careful
        assert any(served) and not all(served)  # a null score sends its shard line by line


def test_long_digit_runs_are_found_and_short_ones_are_not() -> None:
    step = rules.INT_DIGITS // 2
    short = bytearray(b"x" * (step * 12))
    for position in range(0, len(short), step):  # a digit at every sampled byte, in runs of two
        short[position : position + 2] = b"16"
    assert not scan._may_hold_long_digit_run(np.frombuffer(bytes(short), dtype=np.uint8))
    long = bytearray(short)
    long[step * 3 + 5 : step * 3 + 5 + rules.INT_DIGITS + 1] = b"7" * (rules.INT_DIGITS + 1)
    assert scan._may_hold_long_digit_run(np.frombuffer(bytes(long), dtype=np.uint8))


def test_no_temporary_is_left_beside_the_output_also_when_the_run_fails(
    corpora: list[Path], tmp_path: Path
) -> None:
    """The output is written to a unique temporary beside it, then renamed: a failed run leaves the old
    output as it was and nothing else."""
    out_dir = tmp_path / "out"
    output = out_dir / "subset.jsonl"
    subset.build_reference_subset(
        corpora[0], output, alpha=0.2, top_ratio=0.5, num_proc=2, use_cache=False, progress=False,
        shard_bytes=4096,
    )  # fmt: skip
    assert output.read_bytes() == oracle_subset(corpora[0], 0.2, 0.5)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jsonl").write_text(
        '{"image": "a", "steps_with_score": [{"step": 7, "score": 1}]}\n', encoding="utf-8"
    )  # kept, and its step text is not a string: the reference crashes converting it
    with pytest.raises(MPRMError, match="must be a string"):
        subset.build_reference_subset(bad, output, alpha=0.2, top_ratio=1.0, num_proc=1, use_cache=False,
                                      progress=False)  # fmt: skip
    assert sorted(path.name for path in out_dir.iterdir()) == ["subset.jsonl", "subset.selection.json"]
    assert output.read_bytes() == oracle_subset(corpora[0], 0.2, 0.5)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_the_score_table_does_not_depend_on_shards_or_processes(
    corpora: list[Path], tmp_path: Path, num_proc: int
) -> None:
    """Tiny shards on two processes and one whole-file shard give the same table: lines are numbered
    across shards, and every skipped line is counted by reason with its place."""
    for corpus in corpora:
        small = scan.scan_corpus(corpus, num_proc=num_proc, use_cache=False, progress=False, shard_bytes=1024)
        whole = scan.scan_corpus(corpus, num_proc=1, use_cache=False, progress=False, shard_bytes=1 << 30)
        assert small.table.equals(whole.table)
        assert [vars(c) for c in small.counts] == [vars(c) for c in whole.counts]
        for path, counts in zip(whole.files, whole.counts, strict=True):
            data = path.read_bytes()
            lines = re.split(rb"\r\n|\r|\n", data)
            if not lines[-1]:
                lines.pop()  # a final terminator ends no line
            rows = whole.table.filter(pc.equal(whole.table["file"], whole.files.index(path)))
            for line, offset in zip(rows["line"].to_pylist(), rows["offset"].to_pylist(), strict=True):
                assert data[offset:].startswith(lines[line - 1])
            assert counts.ranked + counts.n_skipped == len(lines)
            for reason, line in counts.examples:
                assert reason in scan.SKIP_REASONS and 1 <= line <= len(lines)
    assert any(
        c.skipped
        for corpus in corpora
        for c in scan.scan_corpus(corpus, progress=False, use_cache=False).counts
    )
