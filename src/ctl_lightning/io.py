"""Atomic file-system helpers: outputs appear complete or not at all.

Folders (synthetic dataset, product store, catalogs) are written under a temporary sibling name and
renamed into place when complete; a reader never sees half of one. A lock file serializes builders
that may run at the same time, such as the processes of a DDP job.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A fresh, empty folder next to ``path`` that only this process uses."""
    tmp = path.with_name(f".{path.name}.{tag}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing any older version."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)


def write_json(path: Path, obj: object) -> None:
    """Write JSON through a temporary file and a rename."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """``path`` holds its old content or all of ``data``, even after a crash or a power cut.

    The bytes go to a temporary sibling (same file system, so the rename is atomic), are flushed to
    disk, and only then renamed over ``path``. The temporary name starts with ``.{name}.tmp-`` and
    carries the process and thread, so concurrent writers never share one.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_native_id()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> int:
    """Delete what :func:`write_bytes_atomic` left in ``folder`` when its process died; how many.

    Files of processes still running are theirs, in use, and kept.
    """
    removed = 0
    for tmp in folder.glob(".*.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1].split("-")[0]
        if tmp.is_file() and pid.isdigit() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def exclusive_lock(target: Path) -> Iterator[None]:
    """Hold ``<target>.lock`` exclusively: one builder of ``target`` at a time."""
    lock_path = target.with_name(target.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
