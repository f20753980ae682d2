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
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
