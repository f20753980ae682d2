"""Errors a user can act on.

Every CLI and the training entry point catch :class:`CtlError` and print its message as one line
(exit status 2) instead of a traceback, so each subclass must carry a message that names the file,
row or value at fault and, where there is one, the fix.
"""

from __future__ import annotations

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
