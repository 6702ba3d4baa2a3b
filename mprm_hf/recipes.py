"""Options from a YAML recipe and the command line, for every subcommand that has dataclass arguments:
`mprm-hf COMMAND --config RECIPE.yaml [--field value ...]`, or `mprm-hf COMMAND RECIPE.yaml ...`.

A recipe is a YAML mapping of the command's dataclass fields; flags override it. Parsing is TRL's
`TrlParser` (an `HfArgumentParser`, as in transformers: a field `top_ratio` is `--top_ratio` and
`--top-ratio`), with what a user of the command line needs on top of it: one-line errors that name the
recipe file and the line of the key at fault, a `--help` that shows the recipe argument, and the recipe's
values checked against the fields' types, since YAML values reach the dataclasses without argparse's
conversion.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from trl import TrlParser

from mprm_hf.errors import MPRMError, first_line

RECIPE_METAVAR = "RECIPE.yaml"
_SCALARS = (bool, int, float, str, Path)
_RECIPE_ONLY_KEYS = {"env"}  # TRL's: environment variables set before parsing


def normalise_argv(argv: Sequence[str]) -> list[str]:
    """`RECIPE.yaml` as the first argument and `--config=RECIPE.yaml` both become `--config RECIPE.yaml`
    (the form TrlParser reads); a recipe that is not there is an error before anything is parsed."""
    argv = list(argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        argv = ["--config", *argv]
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise MPRMError(f"--config needs a YAML file ({RECIPE_METAVAR})")
        if not Path(argv[index + 1]).is_file():
            raise MPRMError(f"{argv[index + 1]}: recipe not found")
    return argv


def read_recipe(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The recipe's mapping and the line of each of its keys, or one line naming the file (and line)."""
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise MPRMError(f"{path}: not a UTF-8 text file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise MPRMError(f"{where}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
    if not isinstance(values, dict):
        raise MPRMError(f"{path}: a recipe is a YAML mapping of option: value")
    return values, {str(key.value): key.start_mark.line + 1 for key, _ in node.value}


def _escape_percent(text: str) -> str:
    """argparse %-formats help strings: a lone `%` ("BIS-10%") is escaped; `%%` and `%(...)` are kept."""
    return re.sub(r"%%|%\(|%", lambda match: match.group() if len(match.group()) == 2 else "%%", text)


def _another_recipe(text: str) -> NoReturn:
    """The type of `--config` once TrlParser has taken the first: a second recipe is refused."""
    raise argparse.ArgumentTypeError(f"one recipe at a time ({text} is a second one)")


def _yaml_mapping(text: str) -> dict[str, Any]:
    """A mapping field given on the command line, in YAML or JSON: `--noise '{pseudo_positive: 0.3}'`."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a YAML mapping: {text!r}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """A default is shown when it says something: not None or False, and not already in the help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text.lower():
            return text
        return super()._get_help_string(action)


class RecipeParser(TrlParser):
    """`TrlParser` for the `mprm-hf` commands: errors are one `MPRMError` line, `--help` shows the recipe."""

    def __init__(self, dataclass_types: Sequence[type], *, prog: str, description: str | None = None) -> None:
        super().__init__(
            tuple(dataclass_types), prog=prog, description=description, formatter_class=_HelpFormatter
        )
        recipe = self.add_argument(
            "--config",
            metavar=RECIPE_METAVAR,
            type=_another_recipe,
            default=argparse.SUPPRESS,
            help="YAML recipe: a mapping of the options below (name: value, the name as in "
            "--name_with_underscores); a flag given here overrides it. It may also come first: "
            f"{prog} {RECIPE_METAVAR} [--option value ...]",
        )
        for listing in (self._actions, self._optionals._group_actions):  # listed first, after --help
            listing.insert(1, listing.pop(listing.index(recipe)))
        for action in self._actions:
            if isinstance(action.help, str):
                action.help = _escape_percent(action.help)
            if action.nargs == "?" and action.const is True:  # a bool: `--dry-run` alone is true
                action.metavar = "true|false"
            if isinstance(action, argparse._StoreFalseAction):  # HfArgumentParser's --no_X of a bool X
                action.help = f"the same as --{action.dest} false"
        required = " ".join(
            f"{a.option_strings[-1]} {a.metavar or a.dest.upper()}" for a in self._actions if a.required
        )
        self.usage = (
            f"%(prog)s [{RECIPE_METAVAR} | --config {RECIPE_METAVAR}] {required} [--option value ...]"
        )
        self.usage = self.usage.replace("  ", " ")  # no required option
        self.recipe: Path | None = None

    @staticmethod
    def _parse_dataclass_field(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
        """A mapping field (a sweep's `selectors`, say) is a YAML mapping on the command line, or what its
        metadata's `type` reads; every other field is registered as `HfArgumentParser` does."""
        if typing.get_origin(field.type) is not dict:
            TrlParser._parse_dataclass_field(parser, field)
            return
        options = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
        kwargs: dict[str, Any] = {"type": _yaml_mapping, **field.metadata}
        if field.default_factory is not dataclasses.MISSING:
            kwargs["default"] = field.default_factory()
        elif field.default is not dataclasses.MISSING:
            kwargs["default"] = field.default
        else:
            kwargs["required"] = True
        parser.add_argument(*options, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise MPRMError(message)

    def parse(self, argv: Sequence[str]) -> tuple[Any, ...]:
        """One instance of each dataclass: the recipe's values, overridden by the flags in `argv`."""
        argv = normalise_argv(argv)
        values: dict[str, Any] = {}
        locations: dict[str, str] = {}
        if "--config" in argv:
            self.recipe = Path(argv[argv.index("--config") + 1])
            values, lines = read_recipe(self.recipe)
            locations = {key: f"{self.recipe}:{line}" for key, line in lines.items()}
            self._check_recipe(values, locations)
        try:
            *parsed, remaining = self.parse_args_and_config(argv, return_remaining_strings=True)
        except MPRMError:
            raise
        except ValueError as error:  # a dataclass's own check (TrainingArguments.__post_init__, ...)
            raise MPRMError(first_line(error)) from None
        if remaining:
            raise MPRMError(f"unrecognized arguments: {' '.join(remaining)}")
        for item in parsed:
            check_field_types(item, locations)
        return tuple(parsed)

    def _check_recipe(self, values: Mapping[str, Any], locations: Mapping[str, str]) -> None:
        """Every key is an option of the command, and a string value reads as its option's type."""
        actions = {action.dest: action for action in self._actions if action.dest not in {"help", "config"}}
        for key, value in values.items():
            key, where = str(key), locations.get(str(key), str(self.recipe))
            if key in _RECIPE_ONLY_KEYS:
                continue
            if key not in actions:
                close = difflib.get_close_matches(key, list(actions), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise MPRMError(f"{where}: unknown key '{key}': not an option of {self.prog}{hint}")
            convert = actions[key].type
            if isinstance(value, str) and callable(convert) and convert is not str:
                try:  # argparse converts a string default with the option's type; fail here, located
                    convert(value)
                except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
                    raise MPRMError(f"{where}: recipe field '{key}': {first_line(error)}") from None


def parse_recipe(
    dataclass_types: Sequence[type], argv: Sequence[str], *, prog: str, description: str | None = None
) -> tuple[Any, ...]:
    """Parse `argv` (a recipe and flags) into one instance of each dataclass type."""
    return RecipeParser(dataclass_types, prog=prog, description=description).parse(argv)


def check_field_types(parsed: Any, locations: Mapping[str, str] | None = None) -> None:
    """Refuse, in one line (located in the recipe when `locations` has the field), a value of the wrong
    type for a scalar field (e.g. `num_train_epochs: [1, 2]`) or outside its `choices`, before it breaks a
    run deep inside; a path field given as a string becomes a `Path`."""
    locations = locations or {}
    try:
        hints = typing.get_type_hints(type(parsed))
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved is not checked
        hints = {}
    for item in dataclasses.fields(parsed):
        hint = hints.get(item.name)
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        args = typing.get_args(hint) if union else (hint,)
        allowed = tuple(arg for arg in args if arg in _SCALARS)
        if not allowed or len(allowed) != len([arg for arg in args if arg is not type(None)]):
            continue  # not a plain scalar field (lists, enums, dicts ... are converted or checked elsewhere)
        value = getattr(parsed, item.name)
        if Path in allowed and isinstance(value, str):
            value = Path(value)
            setattr(parsed, item.name, value)
        if value is None and type(None) in args:
            continue
        if isinstance(value, bool):  # a bool is an int to isinstance, never a number here
            ok = bool in allowed
        else:
            ok = isinstance(value, allowed) or (float in allowed and isinstance(value, int))
        where = f"{locations[item.name]}: " if item.name in locations else ""
        if not ok:
            names = " or ".join("path" if arg is Path else arg.__name__ for arg in allowed)
            raise MPRMError(
                f"{where}recipe field '{item.name}' must be {names}, got {type(value).__name__} {value!r}"
            )
        choices = item.metadata.get("choices")
        if choices is not None and value not in choices:
            raise MPRMError(
                f"{where}recipe field '{item.name}' must be one of {', '.join(map(str, choices))}, got {value!r}"
            )
