"""Errors a user can act on. The CLI prints them as one line plus a hint, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unmet precondition: a one-line reason and, where we know one, a fix."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class Terminated(BaseException):
    """SIGTERM, raised in the main thread as SIGINT raises KeyboardInterrupt, so that cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def first_invalid_field(exc) -> tuple[str, str]:
    """(dotted field path, message) of a pydantic ValidationError's first error, for a one-line
    report; the message loses pydantic's "Value error, " prefix. Takes the exception duck-typed, so
    importing this module does not import pydantic."""
    first = exc.errors()[0]
    return ".".join(str(p) for p in first["loc"]), first["msg"].removeprefix("Value error, ")
