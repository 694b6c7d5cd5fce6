"""The one error type for a user's mistake on the command line: `python -m conduit` prints its message as one
line on stderr and exits with status 2 (no traceback). The message says what is wrong and what to type."""
from __future__ import annotations


class UsageError(Exception):
    """A mistake in what the user typed (or in the files and servers they pointed at), not a bug."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\r", " ").replace("\n", " "))  # always one line
