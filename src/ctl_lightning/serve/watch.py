"""Following a ``current`` symlink: promote a run by repointing the link, no request needed.

Deployments often mark the run in production with a symlink (``ln -sfn runs/2026-11-27 current``)
rather than calling an admin endpoint. :class:`LinkWatcher` reads where the link points every
``interval`` seconds, in a daemon thread, and hands a new target to the same reload as
``POST /admin/reload``: the run is loaded and checked in full before it replaces the one served, so
a link repointed at a broken or half-copied run changes nothing but a warning and the failed-reload
count. A failed target is not retried until the link moves again (a half-copied run is then
picked up by pointing the link at it once more).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from ctl_lightning.errors import CtlError
from ctl_lightning.serve.state import ReloadInProgress

log = logging.getLogger("ctl_lightning.serve")


def link_target(link: Path) -> Path:
    """Where ``link`` points now, fully resolved; a one-line error when it is not a symlink."""
    if not link.is_symlink():
        raise CtlError(f"{link}: not a symlink; --watch follows a link such as `ln -sfn RUN {link}`")
    return Path(os.path.realpath(link))


class LinkWatcher:
    """Polls ``link``; when it points at another run, calls ``reload(target)``.

    ``reload`` raises :class:`CtlError` when the run cannot serve and :class:`ReloadInProgress`
    when another reload holds the lock (then the next poll tries again).
    """

    def __init__(self, link: Path, serving: Path, reload: Callable[[Path], object], interval: float = 2.0):
        self.link, self.reload, self.interval = Path(link), reload, interval
        self.serving = serving  # the target loaded last
        self.failed: Path | None = None  # a target that could not serve, skipped until the link moves
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ctl-serve-watch", daemon=True)

    def start(self) -> LinkWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def poll(self) -> None:
        """One look at the link (what the thread does every ``interval`` seconds)."""
        try:
            target = link_target(self.link)
        except (CtlError, OSError) as error:  # removed while being replaced, or gone: keep serving
            log.warning(f"ctl-serve: {error}; still serving {self.serving}")
            return
        if target in (self.serving, self.failed):
            return
        try:
            self.reload(target)
        except ReloadInProgress:
            return
        except CtlError as error:
            self.failed = target
            log.warning(f"ctl-serve: {self.link} -> {target} cannot serve ({error}); still serving {self.serving}")
            return
        self.serving, self.failed = target, None
        log.info(f"ctl-serve: {self.link} -> {target}: now serving it")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()
