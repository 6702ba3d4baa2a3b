"""Every command the README and docs/ show in a shell block is a real command: its subcommand exists, its
flags parse with that subcommand's own parser (nothing is run), and the recipes and files it names exist.
Usage synopses with placeholders live in `text` blocks."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from mprm_hf.cli import COMMANDS
from mprm_hf.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = ("bash", "sh", "")
STARTS = ("mprm-hf", "accelerate launch", "python -m mprm_hf")


def documented_commands() -> list[tuple[str, str]]:
    """(page:line, command) of every command line in a shell block, continuations joined, comments cut."""
    found = []
    for page in PAGES:
        in_block, language, pending, start = False, "", "", 0
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("```"):
                in_block, language = not in_block, line[3:].strip()
                continue
            if not in_block or language not in SHELL_BLOCKS:
                continue
            start = start if pending else number
            pending = f"{pending} {line.strip()}" if pending else line.strip()
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            command, pending = re.split(r"\s+#", pending)[0].strip(), ""
            if command.startswith(STARTS) and not re.match(r"mprm-hf [\w-]+: ", command):  # not an error line
                found.append((f"{page.relative_to(REPO_ROOT)}:{start}", command))
    return found


class Parsed(BaseException):
    """Raised right after a parser read the command line: the command is not run."""

    def __init__(self, extras: list[str]) -> None:
        super().__init__(extras)
        self.extras = extras


def _subcommand_argv(argv: list[str]) -> list[str]:
    if argv[0] == "accelerate":
        config = argv[argv.index("--config_file") + 1]
        assert (REPO_ROOT / config).is_file(), f"{config} does not exist"
        module, rest = argv[argv.index("-m") + 1], argv[argv.index("-m") + 2 :]
        commands = {entry: name for name, (entry, _) in COMMANDS.items()}
        return [commands[module], *rest] if module in commands else rest
    return argv[3:] if argv[:3] == ["python", "-m", "mprm_hf"] else argv[1:]


COMMAND_LINES = documented_commands()


def test_the_pages_show_commands() -> None:
    assert len(COMMAND_LINES) > 20 and {"synth", "select", "train", "evaluate", "push"} <= {
        _subcommand_argv(shlex.split(command))[0] for _, command in COMMAND_LINES if command != "mprm-hf"
    }


@pytest.mark.parametrize(("where", "command"), COMMAND_LINES, ids=[where for where, _ in COMMAND_LINES])
def test_a_documented_command_parses(
    where: str, command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    argv = _subcommand_argv(shlex.split(command))
    if not argv:  # `mprm-hf` alone prints the list of commands
        assert cli_main([]) == 0
        return
    assert argv[0] in COMMANDS, f"{where}: unknown command {argv[0]!r}"
    for token in argv:
        if token.startswith("recipes/"):
            assert (REPO_ROOT / token).is_file(), f"{where}: {token} does not exist"
    if "--help" in argv:
        with pytest.raises(SystemExit) as done:
            cli_main(argv)
        assert done.value.code == 0
        return
    original = argparse.ArgumentParser.parse_known_args

    def parse_then_stop(self, args=None, namespace=None):  # noqa: ANN001, ANN202 - argparse's signature
        _, extras = original(self, args, namespace)
        raise Parsed(extras)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_then_stop)
    monkeypatch.chdir(REPO_ROOT)  # recipes are named relative to the checkout
    with pytest.raises(Parsed) as parsed:
        cli_main(argv)
    assert parsed.value.extras == [], f"{where}: not options of `mprm-hf {argv[0]}`: {parsed.value.extras}"
