"""The failure catalogue's table format, shared by the `test_catalogue_*.py` modules.

Each `Case` names a bad input or a fault, the class of behaviour expected from it, and a fragment of the message:

- `error`: one `InputError` (a `ValueError`) whose message contains `message`; through the CLI, exit status 2 and
  one stderr line `smoe CMD: error: ...` containing it, never a traceback;
- `warning`: the call succeeds with a `UserWarning` containing `message`, then `check(result)` holds;
- `handled`: the call succeeds without a word and `check(result)` holds (the right result, computed independently).

`run(tmp_path)` performs the case and returns its result. CLI cases return a `CliResult` from `run_cli`.
"""

import contextlib
import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import pytest

from hf_smoe.errors import InputError

KINDS = ("error", "warning", "handled")


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    message: str
    run: Callable
    check: Callable | None = None

    def __post_init__(self):
        assert self.kind in KINDS, self.kind
        assert self.kind == "handled" or self.message, f"{self.name}: errors and warnings name their message"

    def __str__(self):
        return self.name


class CliResult(NamedTuple):
    code: int
    stdout: str
    stderr: str


def run_cli(*argv) -> CliResult:
    """`smoe ARGV` in this process: its exit status and what it printed (argparse's own errors included). A raw
    exception propagates: that is a bug."""
    from hf_smoe.cli.main import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main([str(arg) for arg in argv])
        except SystemExit as exit_:
            code = exit_.code
    return CliResult(code, stdout.getvalue(), stderr.getvalue())


def check_case(case: Case, tmp_path) -> None:
    """Runs `case` and asserts its class and message."""
    if case.kind == "error":
        try:
            result = case.run(tmp_path)
        except InputError as error:
            assert case.message.lower() in str(error).lower(), f"{case.name}: {error}"
            return
        assert isinstance(result, CliResult), f"{case.name}: expected an error, got {result!r}"
        lines = [line for line in result.stderr.splitlines() if line.startswith("smoe ")]
        assert result.code == 2, f"{case.name}: exit {result.code}; stderr: {result.stderr[-2000:]}"
        assert len(lines) == 1 and re.match(r"smoe [a-z-]+: error: ", lines[0]), result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert case.message.lower() in lines[0].lower(), f"{case.name}: {lines[0]}"
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = case.run(tmp_path)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if isinstance(result, CliResult):
        assert result.code == 0, f"{case.name}: exit {result.code}; stderr: {result.stderr[-2000:]}"
        messages.append(result.stderr)
    if case.kind == "warning":
        assert any(case.message.lower() in m.lower() for m in messages), f"{case.name}: warnings {messages}"
    if case.check is not None:
        case.check(result)


def parametrize(cases):
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return pytest.mark.parametrize("case", cases, ids=names)
