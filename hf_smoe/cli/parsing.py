"""One parser for every `smoe` command, built on `transformers.HfArgumentParser` as TRL's scripts are: the command's
argument dataclasses become its flags, a YAML recipe (`--config recipe.yaml`, as TRL's `TrlParser` takes it, or a
first argument ending in .yaml) sets any of them by field name, positional arguments are dataclass fields too, and
a command that trains heads hands any Trainer flag given beside its own on to the library.

Recipes and positional arguments are rewritten into `--field=value` tokens before argparse sees them, the recipe's
first: argparse keeps the last value it reads for a flag, so a flag on the command line overrides the recipe, and
nothing reaches into argparse's internals."""

import dataclasses
import difflib
import itertools
import json
import types
import typing
from argparse import SUPPRESS
from pathlib import Path

from transformers import HfArgumentParser

from ..errors import InputError
from ..runtime import first_line

RECIPE_SUFFIXES = (".yaml", ".yml")
CONFIG_FLAG = "--config"

# Trainer flags a command that trains heads derives from its own options, and the option to use instead.
SET_BY_THE_COMMAND = {"output_dir": "--output-dir", "num_train_epochs": "--epochs", "seed": "--seed / --seeds",
                      "overwrite_output_dir": "the command's own output rule"}

TRAINING_FLAGS_HELP = ("Any `smoe train` training flag (--learning_rate, --router_learning_rate, "
                       "--per_device_train_batch_size, --optim, --weight_decay, --bf16, ...; see `smoe train --help`) "
                       "applies to every head the command trains.")


class NotGiven:
    """The default every passed-on flag gets while parsing, so that the flags a user gave are told from the rest."""

    def __repr__(self):
        return "<not given>"


NOT_GIVEN = NotGiven()


def init_fields(dataclass_types) -> list:
    """The fields `HfArgumentParser` makes flags of (those the dataclass's `__init__` takes)."""
    return [field for dtype in dataclass_types for field in dataclasses.fields(dtype) if field.init]


def is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def usage_line(dataclass_types, positional: tuple, passes_on) -> str:
    """`smoe CMD [RECIPE.yaml] POSITIONAL... --required VALUE... [options]`: the positional arguments in place,
    which argparse's own usage (they are flags to it) would not show."""
    fields = {field.name: field for field in init_fields(dataclass_types)}
    metavars = [fields[name].metadata.get("metavar", name.upper()) for name in positional]
    required = [f"--{name} {field.metadata.get('metavar', name.upper())}" for name, field in fields.items()
                if is_required(field) and name not in positional]
    return " ".join(["%(prog)s [RECIPE.yaml]", *metavars, *required, "[options]",
                     *(["[training flags]"] if passes_on else [])])


class CommandParser(HfArgumentParser):
    """The parser of `smoe COMMAND`: `dataclass_types` parsed as `HfArgumentParser` parses them, with `--help` from
    their fields' metadata. `positional` names the fields that may also be given by position, in order, before any
    flag (`smoe eval CHECKPOINT` is `smoe eval --checkpoint CHECKPOINT`). `passes_on` is a `TrainingArguments` class
    whose flags the command takes beside its own and hands on as {field: value} of those given (an extra last
    element of what `parse_command_line` returns). `defaults` replaces fields' defaults for this command."""

    def __init__(self, command: str, dataclass_types, *, doc: str, positional=(), passes_on=None, defaults=None,
                 epilog=None):
        dataclass_types = tuple(dataclass_types) if isinstance(dataclass_types, (tuple, list)) else (dataclass_types,)
        self.positional, self.passes_on = tuple(positional), passes_on
        super().__init__(dataclass_types, prog=f"smoe {command}", description=doc,
                         usage=usage_line(dataclass_types, self.positional, passes_on),
                         epilog=epilog or (TRAINING_FLAGS_HELP if passes_on else None))
        self.add_argument(CONFIG_FLAG, metavar="RECIPE.yaml", default=SUPPRESS,
                          help="a YAML recipe whose keys are the flags' names without the dashes (lists as YAML "
                               "lists); flags on the command line override it. A first argument ending in .yaml "
                               "is read the same way.")
        if defaults:
            self.set_defaults(**defaults)

    def recipe_classes(self) -> list:
        return [*self.dataclass_types, *([self.passes_on] if self.passes_on else [])]

    def recipe_keys(self) -> set:
        return {field.name for field in init_fields(self.recipe_classes())}

    def parse_command_line(self, argv) -> tuple:
        """The command's dataclasses (and, with `passes_on`, the dict of passed-on flags) from its arguments."""
        recipe, argv = split_recipe(list(argv))
        tokens = [*self.recipe_tokens(recipe), *self.positional_tokens(argv)]
        try:
            *arguments, remaining = self.parse_args_into_dataclasses(args=tokens, return_remaining_strings=True)
        except InputError:
            raise
        except ValueError as error:  # TrainingArguments' own checks of an inconsistent combination
            raise InputError(f"training arguments: {first_line(error)}") from None
        passes_on = self.passed_on_class(*arguments)
        if passes_on is None:
            refuse_unrecognized(remaining, self.prog)
            return tuple(arguments)
        return (*arguments, given_flags(passes_on, remaining, self.prog))

    def passed_on_class(self, *arguments):
        """The class whose flags this run passes on; a command whose class depends on its arguments overrides it."""
        return self.passes_on

    def positional_tokens(self, argv: list) -> list:
        leading = list(itertools.takewhile(lambda token: not token.startswith("-"), argv))[:len(self.positional)]
        return [*(f"--{name}={value}" for name, value in zip(self.positional, leading)), *argv[len(leading):]]

    def recipe_tokens(self, path: str | None) -> list:
        if path is None:
            return []
        recipe = flag_names(read_recipe(path), path)
        unknown = sorted(set(recipe) - self.recipe_keys())
        if unknown:
            raise InputError(f"recipe {path}: unknown key(s) {unknown}{self.unknown_key_hints(unknown)}; keys are "
                             f"`{self.prog}` flags without the dashes (see `{self.prog} --help`).")
        self.check_recipe_shapes(recipe, path)
        return [token for name, value in recipe.items() for token in flag_tokens(name, value)]

    def unknown_key_hints(self, unknown: list) -> str:
        """What each unknown key may be: a typo of one of this command's keys, or another command's flag."""
        from .commands import COMMANDS, load_command

        keys, command = self.recipe_keys(), self.prog.removeprefix("smoe ")
        others = {name: load_command(name).make_parser().recipe_keys() for name in COMMANDS if name != command}
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, keys, n=1)
            owners = [f"`smoe {name}`" for name, other_keys in others.items() if key in other_keys]
            if close:
                hints.append(f"{key!r}: did you mean {close[0]!r}?")
            elif owners:
                hints.append(f"{key!r} is a flag of {', '.join(owners[:3])}, not of `{self.prog}`")
        return f" ({'; '.join(hints)})" if hints else ""

    def check_recipe_shapes(self, recipe: dict, path: str) -> None:
        """A list is a value only for a flag that takes several, a mapping only for one that takes a dict: argparse
        would read a list's extra items as stray arguments, and a mapping as a JSON string."""
        hints = {name: hint for dtype in self.recipe_classes() for name, hint in typing.get_type_hints(dtype).items()}
        for name, value in recipe.items():
            for kind, shape in ((list, "a list"), (dict, "a mapping")):
                if isinstance(value, kind) and not admits(hints.get(name), kind):
                    raise InputError(f"recipe {path}: {name} takes one value, got {shape} ({value!r}); write one "
                                     "value after the colon.")


def flag_names(recipe: dict, path: str) -> dict:
    """The recipe with its keys as field names (`max-pairs` is `max_pairs`); two keys naming one flag are refused,
    since only one of them could be used."""
    named, spelled = {}, {}
    for key, value in recipe.items():
        name = str(key).replace("-", "_")
        if name in named:
            raise InputError(f"recipe {path}: keys {spelled[name]!r} and {key!r} set the same flag --{name}; keep "
                             "one.")
        named[name], spelled[name] = value, key
    return named


def admits(hint, kind: type) -> bool:
    """Whether a field of type `hint` (`list[str] | None`, `dict | str`, ...) takes values of `kind`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(admits(arm, kind) for arm in typing.get_args(hint))
    return hint is kind or typing.get_origin(hint) is kind


def flag_tokens(name: str, value) -> list:
    """A recipe entry as command-line tokens: a list as several values, a bool as true/false, a mapping as JSON (the
    Trainer's dict-valued flags read it), null as nothing (the default stays)."""
    if value is None:
        return []
    if isinstance(value, list):
        return [f"--{name}", *(flag_value(item) for item in value)]
    return [f"--{name}={flag_value(value)}"]


def flag_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, dict) else str(value)


def split_recipe(argv: list) -> tuple:
    """(the recipe's path or None, the other arguments): a first argument ending in .yaml/.yml, or `--config PATH`
    anywhere."""
    paths, rest = [], []
    tokens = iter(argv)
    for position, token in enumerate(tokens):
        if token == CONFIG_FLAG:
            paths.append(next(tokens, None))
        elif token.startswith(f"{CONFIG_FLAG}="):
            paths.append(token.partition("=")[2])
        elif position == 0 and token.endswith(RECIPE_SUFFIXES) and not token.startswith("-"):
            paths.append(token)
        else:
            rest.append(token)
    if None in paths or "" in paths:
        raise InputError(f"{CONFIG_FLAG}: expected the path of a YAML recipe.")
    if len(paths) > 1:
        raise InputError(f"recipe: got {len(paths)} recipes ({', '.join(paths)}); give one, and the other settings "
                         "as flags.")
    return (paths[0] if paths else None), rest


def read_recipe(path: str) -> dict:
    import yaml

    try:
        recipe = yaml.load(Path(path).expanduser().read_text(encoding="utf-8"), Loader=unique_key_loader())
    except FileNotFoundError:
        raise InputError(f"recipe: no such file {path}.") from None
    except IsADirectoryError:
        raise InputError(f"recipe: {path} is a folder; give the YAML file.") from None
    except UnicodeDecodeError as error:
        raise InputError(f"recipe {path}: not UTF-8 text ({error.reason} at byte {error.start}); save the recipe as "
                         "UTF-8 YAML.") from None
    except yaml.YAMLError as error:
        raise InputError(f"recipe {path}: not valid YAML ({first_line(error)}).") from None
    if recipe is None:
        raise InputError(f"recipe {path}: the file is empty; write one `flag_name: value` per line.")
    if not isinstance(recipe, dict):
        raise InputError(f"recipe {path}: expected a mapping of flag names to values, got {type(recipe).__name__}.")
    return recipe


def unique_key_loader():
    """`yaml.SafeLoader` refusing a key given twice in one mapping (YAML requires unique keys; PyYAML would keep
    the last one without a word)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            lines = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if isinstance(key, typing.Hashable) and key in lines:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice, on lines {lines[key]} and {line}; keep one",
                        key_node.start_mark)
                lines[key] = line
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def refuse_unrecognized(tokens: list, prog: str) -> None:
    if tokens:
        raise InputError(f"unrecognized arguments: {' '.join(tokens)} (see `{prog} --help`).")


def given_flags(arguments_class, argv: list, prog: str) -> dict:
    """{field: value} of the `arguments_class` flags `argv` gives, for every head (or backbone) a command trains; a
    flag the command derives from its own options is refused, and the combination is checked as `arguments_class`
    checks it."""
    if not argv:
        return {}
    parser = HfArgumentParser(arguments_class, prog=prog)
    parser.set_defaults(**{field.name: NOT_GIVEN for field in init_fields([arguments_class])})
    namespace, unknown = parser.parse_known_args(argv)
    refuse_unrecognized(unknown, prog)
    given = {name: value for name, value in vars(namespace).items() if value is not NOT_GIVEN}
    clash = sorted(set(given) & set(SET_BY_THE_COMMAND))
    if clash:
        raise InputError(f"{clash[0]}: `{prog}` sets it itself; use {SET_BY_THE_COMMAND[clash[0]]}.")
    try:
        arguments_class(output_dir="unused", **given)
    except InputError:
        raise
    except ValueError as error:  # TrainingArguments' own checks of an inconsistent combination
        raise InputError(f"training arguments: {first_line(error)}") from None
    return given
