"""Options from a YAML recipe and the command line, for every subcommand that has dataclass arguments:
`mprm-hf COMMAND --config RECIPE.yaml [--field value ...]`, or `mprm-hf COMMAND RECIPE.yaml ...`.

A recipe is a YAML mapping of the command's dataclass fields; flags override it. Parsing follows TRL's
`TrlParser` (an `HfArgumentParser`, as in transformers: a field `top_ratio` is `--top_ratio` and
`--top-ratio`; the recipe's values become the defaults, its `env` mapping sets environment variables),
with what a user of the command line needs on top of it: one-line errors that name the recipe file and
the line of the key at fault, a `--help` that shows the recipe argument, and the recipe's values checked
against the fields' types, since YAML values reach the dataclasses without argparse's conversion.

A plain scalar field (str, int, float, path or bool, or one of them or None) is registered here exactly as
`HfArgumentParser` registers it (a test compares the two); any other field (TrainingArguments' enums,
lists and unions) by TRL's own code, which is imported only then: importing TRL costs ~0.15 s, which
`mprm-hf select`, all of whose fields are plain, does not pay.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

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


def string_to_bool(text: str | bool) -> bool:
    """HfArgumentParser's reading of a boolean option's value."""
    if isinstance(text, bool):
        return text
    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(
        f"Truthy value expected: got {text} but expected one of yes/no, true/false, t/f, y/n, 1/0 (case insensitive)."
    )


def _accept_none(inner: Callable[[str], Any]) -> Callable[[str], Any]:
    """HfArgumentParser's `X | None` value: `none` / `null` (any case) is None."""

    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else inner(text)

    parse.__name__ = getattr(inner, "__name__", "value")  # argparse's messages name the inner type
    return parse


def _plain_type(hint: Any) -> tuple[type, bool] | None:
    """(type, accepts None) of a plain scalar field, else None (TRL's code registers that field)."""
    args = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else ()
    )
    optional = type(None) in args
    inner = [arg for arg in args if arg is not type(None)] if args else [hint]
    if len(inner) == 1 and inner[0] in _SCALARS and (optional or not args):
        return inner[0], optional
    return None


def _add_plain_argument(
    parser: argparse.ArgumentParser, field: dataclasses.Field, kind: type, optional: bool
) -> None:
    """`HfArgumentParser._parse_dataclass_field` for a plain scalar field, step for step."""
    options = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
    kwargs = dict(field.metadata)
    aliases = kwargs.pop("aliases", [])
    aliases = [aliases] if isinstance(aliases, str) else list(aliases)
    bool_kwargs = copy.copy(kwargs)
    if kind is bool:
        kwargs["type"] = string_to_bool
        if not optional or (field.default is not None and field.default is not dataclasses.MISSING):
            kwargs["default"] = False if field.default is dataclasses.MISSING else field.default
            kwargs["nargs"], kwargs["const"] = "?", True
    else:
        kwargs["type"] = _accept_none(kind) if optional and kind is not str else kind
        if field.default is not dataclasses.MISSING:
            kwargs["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            kwargs["default"] = field.default_factory()
        else:
            kwargs["required"] = True
    parser.add_argument(*options, *aliases, **kwargs)
    if kind is bool and field.default is True:  # the `--no_X` complement, after the option itself
        bool_kwargs["default"] = False
        parser.add_argument(
            f"--no_{field.name}", f"--no-{field.name.replace('_', '-')}", action="store_false", dest=field.name,
            **bool_kwargs,
        )  # fmt: skip


class RecipeParser(argparse.ArgumentParser):
    """The `mprm-hf` commands' parser (TRL's `TrlParser` rules, see the module docstring): errors are one
    `MPRMError` line, `--help` shows the recipe."""

    def __init__(self, dataclass_types: Sequence[type], *, prog: str, description: str | None = None) -> None:
        super().__init__(prog=prog, description=description, formatter_class=_HelpFormatter)
        self.dataclass_types = list(dataclass_types)
        for dtype in self.dataclass_types:
            if "config" in dtype.__dataclass_fields__:  # TrlParser's rule: --config is the recipe
                raise ValueError(
                    f"Dataclass {dtype.__name__} has a field named 'config', which names the recipe"
                )
            group = (
                self.add_argument_group(dtype._argument_group_name)
                if hasattr(dtype, "_argument_group_name")
                else self
            )
            hints = typing.get_type_hints(dtype)
            for item in dataclasses.fields(dtype):
                if item.init:
                    item.type = hints[item.name]
                    self._parse_dataclass_field(group, item)
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
        metadata's `type` reads; a plain scalar field is registered here, any other by TRL's code."""
        if typing.get_origin(field.type) is not dict:
            plain = _plain_type(field.type)
            if plain is not None:
                _add_plain_argument(parser, field, *plain)
                return
            from trl import TrlParser

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
            # TrlParser's steps: the first --config is the recipe, its env is set, its values are defaults
            index = argv.index("--config")
            argv = argv[:index] + argv[index + 2 :]
            environment = values.get("env", {})
            if not isinstance(environment, dict):
                raise MPRMError(f"{locations.get('env', self.recipe)}: recipe field 'env' must be a mapping")
            os.environ.update({str(key): str(value) for key, value in environment.items()})
            for action in self._actions:
                if action.dest in values:
                    action.default, action.required = values[action.dest], False
        namespace, remaining = self.parse_known_args(argv)
        if remaining:
            raise MPRMError(f"unrecognized arguments: {' '.join(remaining)}")
        parsed = []
        for dtype in self.dataclass_types:
            names = {item.name for item in dataclasses.fields(dtype) if item.init}
            try:
                parsed.append(
                    dtype(**{name: value for name, value in vars(namespace).items() if name in names})
                )
            except ValueError as error:  # a dataclass's own check (TrainingArguments.__post_init__, ...)
                raise MPRMError(first_line(error)) from None
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
