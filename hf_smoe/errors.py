"""The failures a user causes or can fix, as their own exception types: `smoe` prints them as one line and exits
with status 2, while any other exception is a bug and keeps its traceback.

`InputError` is defined in the remote code (which must stay self-contained) and re-exported here, so that the
library and a checkpoint's own code raise one and the same class.
"""

from .modeling.configuration_smoe import InputError


class EndpointError(RuntimeError):
    """A request the server refused or never answered; `status` is its HTTP status (None: no answer at all)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


__all__ = ["EndpointError", "InputError"]
