"""One-line errors instead of tracebacks for every entry point."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ctl_lightning.errors import CtlError

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
