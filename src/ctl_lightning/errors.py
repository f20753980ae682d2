"""Errors a user can act on, and how every entry point reports them.

Every CLI, the app and the training entry points catch :class:`CtlError` (:func:`friendly_errors`)
and print its message as one line (exit status 2) instead of a traceback, so each subclass must carry
a message that names the file, row or value at fault and, where there is one, the fix.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class CtlError(Exception):
    """A problem with the user's input or set-up, reported without a traceback."""


class DataFormatError(CtlError):
    """A file that does not follow its format; the message is ``FILE:LINE: problem``."""

    def __init__(self, path: str | Path, line: int | str | None, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")


class PretrainedWeightsError(CtlError):
    """Pretrained weights were asked for but cannot be had; never replaced by a random init."""


EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # what a shell reports for a command ended by Ctrl-C


def user_error(error: BaseException) -> CtlError | None:
    """The :class:`CtlError` behind ``error``, looking through wrappers such as Hydra's InstantiationException."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, CtlError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def friendly_errors(program: str) -> Iterator[None]:
    """Print ``program: error: message`` and exit with status 2 for problems the user can fix."""
    try:
        yield
    except KeyboardInterrupt:
        # Builds remove their temporary folders on the way out; a traceback would add nothing.
        print(f"{program}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            raise
        print(f"{program}: error: {cause}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
