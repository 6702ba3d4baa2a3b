"""Recipes for every subcommand (`--config RECIPE.yaml`, mprm_hf.recipes): the shipped select, evaluate and
sweep recipes, flags over the recipe, the one-line errors of a bad recipe, readable help, the version."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mprm_hf.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parent.parent
SELECT_RECIPE = REPO_ROOT / "recipes" / "select" / "bis-10.yaml"
EVALUATE_RECIPE = REPO_ROOT / "recipes" / "evaluate" / "visualprocessbench.yaml"
SWEEP_RECIPE = REPO_ROOT / "recipes" / "sweeps" / "tiny.yaml"
TRAIN_RECIPE = REPO_ROOT / "recipes" / "tiny-cpu" / "config.yaml"


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line a failed command printed (and nothing else on stderr)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_select_runs_its_recipe_with_a_flag_over_it(synthetic_dir: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "bis"
    argv = ["select", "--config", str(SELECT_RECIPE), "--annotations", str(synthetic_dir), "--output", str(output),
            "--top-ratio", "0.2", "--dry-run", "false", "--quiet"]  # fmt: skip
    assert cli_main(argv) == 0, capsys.readouterr().err
    selection = json.loads((output / "selection.json").read_text())
    assert selection["selector"] == "bis"
    assert selection["selector_params"]["alpha"] == 0.2  # the recipe's
    assert selection["selector_params"]["top_ratio"] == 0.2  # the flag's, over the recipe's 0.1
    assert (output / "dataset_info.json").is_file()  # format: arrow, from the recipe
    assert not (tmp_path / "bis.hub").exists()  # --dry-run false over the recipe's dry_run: true


def test_select_flags_keep_their_spelling(tmp_path: Path) -> None:
    from mprm_hf.errors import MPRMError
    from mprm_hf.selection.cli import parse_args, selector_params

    assert parse_args([str(SELECT_RECIPE)]).dry_run is True
    args = parse_args([str(SELECT_RECIPE), "--dry-run", "false", "--push-to-hub", "me/bis", "--private",
                       "--entropy-drop", "0.2", "--allow-outside-images", "--no-cache", "--stage-dir", "st"])  # fmt: skip
    assert args.dry_run is False and args.push_to_hub == "me/bis" and args.private and args.no_cache
    assert args.entropy_drop == 0.2 and args.allow_outside_images and args.stage_dir == Path("st")
    assert (
        args.output == Path("outputs/select/bis-10") and args.top_ratio == 0.1
    )  # a path from YAML is a Path
    assert parse_args([f"--config={SELECT_RECIPE}", "--top_ratio", "0.3"]).top_ratio == 0.3
    assert selector_params(parse_args([str(SELECT_RECIPE), "--alpha", "0"])) == {"alpha": 0.0}  # 0 is a value
    with pytest.raises(MPRMError, match="--curriculum does not apply to --method bis"):
        selector_params(parse_args([str(SELECT_RECIPE), "--curriculum"]))


def test_evaluate_and_sweep_recipes_parse(tmp_path: Path) -> None:
    from mprm_hf.evaluation import parse_args as evaluate_args
    from mprm_hf.sweep import parse_args as sweep_args

    args = evaluate_args(["--config", str(EVALUATE_RECIPE), "--batch-size", "2", "--max-length", "64"])
    assert args.model == "outputs/tiny-cpu" and args.benchmark == "embedded/synthetic/VisualProcessBench"
    assert args.out == Path("outputs/tiny-cpu/eval") and args.batch_size == 2 and args.max_length == 64
    assert not args.update_card
    assert evaluate_args([str(EVALUATE_RECIPE), "--model", str(tmp_path), "--update-card"]).update_card
    config = sweep_args(["--config", str(SWEEP_RECIPE), "--seeds", "0", "--selectors", "bis", "random",
                         "--output-dir", str(tmp_path / "sweep")])  # fmt: skip
    assert config.seeds == [0] and config.fractions == [0.1]
    assert config.selectors == {"bis": {"alpha": 0.2}, "random": {}}
    assert config.output_dir == str(tmp_path / "sweep")


def test_train_flag_overrides_its_recipe() -> None:
    from mprm_hf.train import parse_args

    script_args, training_args = parse_args(
        [str(TRAIN_RECIPE), "--learning_rate", "0.5", "--embedded-root", "e"]
    )
    assert training_args.learning_rate == 0.5 and training_args.num_train_epochs == 2
    assert script_args.embedded_root == "e" and script_args.eval_fraction == 0.1


def test_update_card_needs_a_local_model_folder(tmp_path: Path, capsys) -> None:
    """Refused before anything is scored (the card is written in the model's folder)."""
    argv = ["evaluate", "--model", "someone/prm", "--out", str(tmp_path / "eval"), "--update-card"]
    assert cli_main(argv) == 1
    assert _error(capsys).endswith("error: --update-card needs a local model folder")
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize(
    ("command", "recipe", "message"),
    [
        ("select", "annotations: x\ntop_ratoi: 0.1\n", "recipe.yaml:2: unknown key 'top_ratoi'"),
        ("evaluate", "model: m\nout: o\nbatch_size: [1, 2]\n",
         "recipe.yaml:3: recipe field 'batch_size' must be int, got list [1, 2]"),
        ("select", "annotations: x\noutput: o\ntop_ratio: abc\n", "recipe.yaml:3: recipe field 'top_ratio'"),
        ("select", "annotations: x\noutput: o\nmethod: bogus\n", "recipe.yaml:3: recipe field 'method' must be one of"),
        ("sweep", "seeds: [0]\n\noutput_dirr: x\n", "recipe.yaml:3: unknown key 'output_dirr'"),
        ("train", "output_dir: x\nnot_a_field: 3\n", "recipe.yaml:2: unknown key 'not_a_field'"),
        ("evaluate", "model: m\nout: [o\n", r"recipe.yaml:3: not valid YAML"),
        ("sweep", "- a list\n", "recipe.yaml: a recipe is a YAML mapping"),
    ],
    ids=["unknown-key", "wrong-type", "not-a-number", "not-a-choice", "sweep-unknown", "train-unknown",
         "bad-yaml", "not-a-mapping"],
)  # fmt: skip
def test_bad_recipe_is_one_line_naming_the_file(command, recipe, message, tmp_path: Path, capsys) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe, encoding="utf-8")
    assert cli_main([command, "--config", str(path)]) == 1
    error = _error(capsys)
    assert error.startswith(f"mprm-hf {command}: error: {path}") and message in error, error


@pytest.mark.parametrize("command", ["select", "evaluate", "sweep", "train"])
def test_missing_recipe_is_one_line(command: str, tmp_path: Path, capsys) -> None:
    assert cli_main([command, "--config", str(tmp_path / "missing.yaml")]) == 1
    assert _error(capsys) == f"mprm-hf {command}: error: {tmp_path / 'missing.yaml'}: recipe not found"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--model", "m"], "the following arguments are required: --out"),
        (["evaluate", "--model", "m", "--out", "o", "--threshold", "0.5", "--calibration", "c.jsonl"],
         "give either --threshold or --calibration, not both"),
        (["select", "--annotations", "a", "--output", "o", "--top-ratio", "0.1", "--budget", "3"],
         "give either --top-ratio or --budget, not both"),
        (["select", "--annotations", "a", "--output", "o", "--bogus", "3"], "unrecognized arguments: --bogus 3"),
        (["sweep", "--seeds", "0"], "a sweep needs its recipe: --config RECIPE.yaml"),
        (["sweep", str(SWEEP_RECIPE), "--config", "x.yaml"], "argument --config: one recipe at a time"),
        (["sweep", str(SWEEP_RECIPE), "--selectors", "nope"], "--selectors: nope not in the recipe"),
    ],
    ids=["required", "threshold-calibration", "ratio-budget", "unknown-flag", "sweep-recipe", "two-recipes",
         "sweep-selectors"],
)  # fmt: skip
def test_bad_flags_are_one_line(argv: list[str], message: str, capsys) -> None:
    assert cli_main(argv) == 1
    error = _error(capsys)
    assert error.startswith(f"mprm-hf {argv[0]}: error: ") and message in error, error


@pytest.mark.parametrize("command", ["train", "select", "evaluate", "sweep"])
def test_help_is_readable_and_shows_the_recipe(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    usage = out.splitlines()[0]
    assert usage.startswith(f"usage: mprm-hf {command} [RECIPE.yaml | --config RECIPE.yaml]"), usage
    assert "%(" not in out and "argparse" not in out and "'prog':" not in out
    assert "--config RECIPE.yaml  YAML recipe" in out
    if command == "train":
        assert "the embedded BIS-10% subset" in " ".join(out.split())


def test_version(capsys) -> None:
    from mprm_hf import __version__

    for flag in ("--version", "-V"):
        assert cli_main([flag]) == 0
        assert capsys.readouterr().out == f"mprm-hf {__version__}\n"


def test_python_dash_m_mprm_hf() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mprm_hf", "--help"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    )
    assert result.returncode == 0 and result.stdout.startswith("usage: mprm-hf"), result.stderr


def _registered(parser, dests: set[str]) -> list[tuple]:  # noqa: ANN001 - an argparse parser
    """What argparse knows of each option of `dests`: names, destination, action, default, choices,
    nargs, const, required, and how its type reads a few values (help texts aside: ours are edited)."""
    samples = ["1", "0.5", "true", "no", "none", "Null", "x/y", "bis"]

    def reads(kind):  # noqa: ANN001, ANN202
        out = []
        for sample in samples:
            try:
                out.append(repr(kind(sample)))
            except Exception as error:  # noqa: BLE001 - the same refusal counts too
                out.append(type(error).__name__)
        return out

    return sorted(
        (tuple(a.option_strings), a.dest, type(a).__name__, repr(a.default), a.choices, a.nargs, a.const,
         a.required, reads(a.type) if a.type else None)
        for a in parser._actions
        if a.dest in dests
    )  # fmt: skip


@pytest.mark.parametrize("command", ["select", "evaluate", "sweep", "train"])
def test_plain_fields_are_registered_as_hf_argument_parser_registers_them(command: str) -> None:
    """The parser registers plain scalar fields itself (so that `select` never imports TRL): for every
    command's dataclasses, those options must be what TRL's HfArgumentParser makes of the same fields."""
    import argparse
    import dataclasses
    import typing

    from trl import TrlParser

    from mprm_hf import evaluation, recipes, sweep, train
    from mprm_hf.selection import cli as select_cli

    types = {
        "select": (select_cli.SelectArguments,),
        "evaluate": (evaluation.EvaluateArguments,),
        "sweep": (sweep.SweepConfig,),
        "train": (train.ScriptArguments, train.PRMConfig),
    }[command]
    ours = recipes.RecipeParser(types, prog="x")
    theirs = argparse.ArgumentParser(prog="x")
    plain = set()
    for dtype in types:
        hints = typing.get_type_hints(dtype)
        for item in dataclasses.fields(dtype):
            if item.init and recipes._plain_type(hints[item.name]) is not None:
                item.type = hints[item.name]
                TrlParser._parse_dataclass_field(theirs, item)
                plain.add(item.name)
    assert len(plain) >= 5
    assert _registered(ours, plain) == _registered(theirs, plain)


def test_select_does_not_import_trl() -> None:
    """TRL's import reads every installed package's metadata (~0.15 s): a select run must not pay it."""
    code = (
        "import sys; from mprm_hf.selection.cli import parse_args; "
        "parse_args(['--annotations', 'a', '--output', 'o', '--top-ratio', '0.1']); "
        "print('trl' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
