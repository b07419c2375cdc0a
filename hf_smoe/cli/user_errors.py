"""How `smoe` reports what went wrong: a failure the user caused or can fix (bad input, an unreachable server, a
full disk) as one line `smoe CMD: error: ...`, a warning as one line `smoe CMD: warning: ...`; anything else is a
bug and keeps its traceback."""

import errno

from ..errors import EndpointError, InputError

# OS errors a user fixes outside the program (space, permissions), reported with the path they hit.
ENVIRONMENT_ERRNOS = {errno.ENOSPC: "no space left on the device; free space or write somewhere else",
                      errno.EDQUOT: "disk quota exceeded; free space or write somewhere else",
                      errno.EACCES: "permission denied; choose a path you can write",
                      errno.EROFS: "read-only file system; choose a writable path"}


def user_error_message(error: Exception) -> str | None:
    """The one line `smoe` prints for a failure the user caused or can fix, or None for anything else."""
    from datasets.exceptions import DatasetNotFoundError

    if isinstance(error, (InputError, EndpointError)):
        return " ".join(str(error).split("\n"))
    if isinstance(error, DatasetNotFoundError):  # a Hub dataset name that does not exist (or is private)
        return f"dataset: {error} Check the name, or log in (`hf auth login`) if it is private."
    if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
        where = f" ({error.filename})" if error.filename else ""
        return f"{ENVIRONMENT_ERRNOS[error.errno]}{where}."
    return None


def one_line_warning(command: str):
    """`warnings.formatwarning` for the CLI: `smoe CMD: warning: message` (what was dropped and how many), without
    the source line Python would print under it."""
    def format_warning(message, category, filename, lineno, line=None):
        kind = "" if category is UserWarning else f"{category.__name__}: "
        return f"smoe {command}: warning: {kind}{message}\n"
    return format_warning
