"""The `smoe` command line: `smoe COMMAND [RECIPE.yaml] [ARGS]` parses ARGS with the command's own parser
(`commands/<command>.py`), runs its `main`, and reports a failure the user can fix as one line with exit status 2."""

import sys
import warnings

from .commands import COMMANDS, load_command, summary
from .user_errors import one_line_warning, user_error_message

DESCRIPTION = "Sparse Mixture-of-Experts reward models: train, read, steer and personalize."


def overview() -> str:
    """`smoe --help`: every command with its one line."""
    width = max(len(name) for name in COMMANDS) + 2
    lines = [f"  {name:<{width}}{summary(name)}" for name in COMMANDS]
    return "\n".join(["usage: smoe COMMAND [RECIPE.yaml | --config RECIPE.yaml] [ARGS]", "", DESCRIPTION, "",
                      "commands:", *lines, "", "`smoe COMMAND --help` lists a command's flags."])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return 0
    name, arguments = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"usage: smoe COMMAND [ARGS]\nsmoe: error: unknown command {name!r}; choose from "
              f"{', '.join(COMMANDS)} (`smoe --help`).", file=sys.stderr)
        return 2
    command = load_command(name)
    python_format, warnings.formatwarning = warnings.formatwarning, one_line_warning(name)
    try:
        command.main(*command.make_parser().parse_command_line(arguments))
    except Exception as error:  # a failure the user can fix: one clear line, exit 2; a bug keeps its traceback
        message = user_error_message(error)
        if message is None:
            raise
        print(f"smoe {name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: outputs are staged and caches checkpointed, so nothing half-written stays
        print(f"smoe {name}: interrupted; finished work is kept, and the same command goes on from it.",
              file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = python_format
    return 0
