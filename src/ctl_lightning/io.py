"""Atomic file-system helpers: outputs appear complete or not at all, and a killed run leaves
nothing that blocks or fills the next one.

Folders (synthetic dataset, product store, catalogs) are built under a temporary sibling name and
renamed into place when complete; a reader never sees half of one. A build that fails removes its
temporary folder; one that is killed leaves it, and the next build of the same folder removes it
(:func:`remove_leftovers`). A lock file serializes builders that may run at the same time, such as
the processes of a DDP job; it names its holder, so a waiting run says whom it waits for.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from ctl_lightning.errors import CtlError

log = logging.getLogger(__name__)

# A write that fails with one of these means the disk (or the user's quota or file-size limit) is full.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

_held_locks: set[int] = set()  # descriptors of the locks this process holds


def _drop_inherited_locks() -> None:
    """In a forked child, before anything else runs: close its copies of the parent's lock
    descriptors. A lock lasts while any copy is open, so a child that outlived a killed parent
    would otherwise keep every later build waiting."""
    for fd in _held_locks:
        with suppress(OSError):
            os.close(fd)
    _held_locks.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def remove_leftovers(path: Path) -> None:
    """Remove ``.<name>.tmp-PID`` and ``.<name>.old-PID`` siblings of ``path`` whose process is gone.

    They are what a killed build leaves (as large as the output itself); a live process's folder
    may still be in use, so it is kept.
    """
    for leftover in path.parent.glob(f".{path.name}.*-*"):
        tag, _, pid = leftover.name[len(path.name) + 2 :].rpartition("-")
        if tag in ("tmp", "old") and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def building(final: Path, needed_bytes: int | None = None) -> Iterator[Path]:
    """A fresh temporary sibling folder of ``final`` that only this process uses.

    If the block fails the folder is removed, and a full disk becomes a one-line error naming the
    folder and the bytes the build needs (``needed_bytes``, when known), instead of a traceback.
    """
    remove_leftovers(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if error.errno not in NO_SPACE:
            raise
        need = f"; it needs {needed_bytes:,} bytes" if needed_bytes else ""
        raise CtlError(f"{final}: not enough disk space ({os.strerror(error.errno)}){need}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def reserve(path: Path, size: int) -> None:
    """Allocate ``size`` bytes for ``path`` now, so a full disk fails here with ``ENOSPC`` rather
    than later as a SIGBUS, when a write through a memory map finds no block for a sparse page."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, max(1, size))
    except OSError as error:
        if error.errno in NO_SPACE:
            raise
        # A file system without fallocate (EOPNOTSUPP): nothing reserved, writes find out themselves.
    finally:
        os.close(fd)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing any older version.

    The older version is moved aside first and removed last, so ``final`` is missing only between
    two renames; if the removal is killed, the next build removes the ``.old-PID`` folder.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, obj: object) -> None:
    """Write strict JSON (no NaN or Infinity, which JSON does not have) through a temporary file and a rename."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n").encode("utf-8"))


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
        if tmp.is_file() and pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def read_json_object(path: Path, required: dict[str, type | tuple[type, ...]]) -> dict:
    """A JSON object with the ``required`` fields (dotted names reach into sub-objects) of the given
    types, or a one-line error naming the file: a damaged manifest must not end in a traceback."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CtlError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CtlError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise CtlError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for name, kind in required.items():
        value: object = data
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, bool) or not isinstance(value, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise CtlError(f"{path}: field {name!r} must be {names}, got {value!r}")
    return data


@contextmanager
def exclusive_lock(target: Path) -> Iterator[None]:
    """Hold ``<target>.lock`` exclusively: one builder of ``target`` at a time.

    The holder writes its PID into the file, so a run that has to wait says at once which process it
    waits for instead of blocking silently. No child process keeps the lock: the descriptor is
    close-on-exec, and forked children close their copy (:func:`_drop_inherited_locks`).
    """
    lock_path = target.with_name(target.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    _held_locks.add(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            state = "running" if holder.isdigit() and pid_alive(int(holder)) else "exited, a child of it still holds the lock"
            log.warning(f"{target}: waiting for process {holder or '?'} ({state}), which holds {lock_path}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        _held_locks.discard(fd)
        os.close(fd)  # releases the lock
