"""The `mprm-hf` dispatcher: help, unknown commands, and one-line errors with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mprm_hf.cli import COMMANDS, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name}" in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_useful_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"mprm-hf {name}" in out
    assert "--" in out  # documents at least one option


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["selcet"]) == 2
    assert "unknown command 'selcet'" in capsys.readouterr().err


def test_user_error_is_one_line_and_exit_1(tmp_path) -> None:
    """A real process: no traceback reaches the user, only the error line."""
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mprm_hf.cli",
            "select",
            "--annotations",
            str(missing),
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mprm-hf select: error:") and "nowhere" in lines[0]


def test_os_error_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    steps = tmp_path / "steps.txt"
    steps.mkdir()  # a folder where a file is expected
    code = main(["score", "--model", str(tmp_path), "--question", "q", "--steps", str(steps)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mprm-hf score: error:")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "{recipe}"], "recipe field 'num_train_epochs' must be float, got list [1, 2]"),
        (
            [
                "select",
                "--annotations",
                "{synthetic}",
                "--top-ratio",
                "0.1",
                "--output",
                "{out}",
                "--num-proc",
                "-2",
            ],
            "--num-proc must be a positive number of processes, got -2",
        ),
        (
            ["rerank", "--model", "{model}", "--candidates", "{candidates}", "--out", "{out}"],
            "candidates.jsonl:1: not valid UTF-8",
        ),
        (
            [
                "train",
                "recipes/tiny-cpu/config.yaml",
                "--dataset_name",
                "{stepwise}",
                "--output_dir",
                "{out}",
            ],
            "records.jsonl:2: not a JSON line (truncated?)",
        ),
    ],
    ids=["recipe-type", "num-proc", "rerank-not-utf8", "train-truncated-jsonl"],
)
def test_bad_input_is_one_line_not_a_traceback(
    argv, message, tmp_path, synthetic_dir, tiny_model_dir, capsys
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("num_train_epochs: [1, 2]\n", encoding="utf-8")
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_bytes(b"\xff\xfe{}\n")
    stepwise = tmp_path / "records.jsonl"
    stepwise.write_text(
        '{"prompt": "p", "completions": ["a"], "labels": [true]}\n{"prompt": "p", "compl', encoding="utf-8"
    )
    values = {"recipe": recipe, "synthetic": synthetic_dir, "out": tmp_path / "out", "model": tiny_model_dir,
              "candidates": candidates, "stepwise": stepwise}  # fmt: skip
    code = main([arg.format(**values) for arg in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 1 and len(err) == 1 and message in err[0], err
