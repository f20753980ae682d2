"""Keep freed memory in the process: glibc's allocator tuned for tensors that come and go per batch.

A forward pass allocates activations of megabytes to tens of megabytes and frees them at the end of
the batch. glibc serves an allocation above its mmap threshold (at most 32 MiB, adjusted as it goes)
with a fresh ``mmap`` and gives it back with ``munmap`` when freed, and returns the top of the heap
to the system once more than the trim threshold is free. So every batch maps its activations anew
and takes a page fault for each 4 KiB page it touches. On some hosts a fault is cheap; on the AMD
EPYC virtual machine of experiments/benchmarks/NOTES.md it is not, and pure inference of the default
backbone ran at 440 to 540 images/s with glibc's defaults against 1,100 to 1,215 with large
allocations served from a heap that is never trimmed (same process, same batches).

:func:`keep_freed_memory` sets the two thresholds so that freed memory stays mapped and is reused,
as PyTorch's CUDA allocator does on a GPU. The cost is that a process keeps its peak heap until it
exits, which for a training, predict or serving process is its working set anyway. The entry points
(``train.py``, ``eval.py``, the ``ctl-*`` commands, ``make bench``) call it first;
``CTL_KEEP_FREED_MEMORY=0`` leaves glibc's defaults. Elsewhere (another C library) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
MMAP_THRESHOLD = 1 << 30  # allocations above 1 GiB still get their own mapping
TRIM_THRESHOLD = (1 << 31) - 1  # the largest value mallopt's int takes: in practice, never trim
ENV = "CTL_KEEP_FREED_MEMORY"
_kept = False  # whether this process's allocator was tuned (glibc cannot be asked)


def keep_freed_memory() -> bool:
    """Tune glibc's allocator (once per process; calling again is harmless); whether it was tuned."""
    global _kept
    if os.environ.get(ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _kept = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _kept


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` has tuned this process (what a benchmark records)."""
    return _kept
