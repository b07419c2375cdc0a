"""The `smoe` commands, one module each (`tune-backbone` is `tune_backbone.py`), shaped like TRL's scripts: the
command's argument dataclasses, `make_parser()` returning its `CommandParser`, and `main(*arguments)` taking what
that parser returns. The module docstring's first line is the command's line in `smoe --help`; the docstring is
its `--help` description."""

import importlib

COMMANDS = ("demo", "embed", "train", "tune-backbone", "eval", "interpret", "reproduce", "steer", "adapt", "push",
            "serve", "bench")


def load_command(name: str):
    """The module of command `name` (one of COMMANDS)."""
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")


def summary(name: str) -> str:
    """The command's one line: the first line of its module's docstring."""
    return load_command(name).__doc__.strip().splitlines()[0].rstrip(".")
