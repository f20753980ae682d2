"""Process pools for long builds (the product store, the synthetic dataset) that a kill cannot wedge.

A worker orphaned by a killed parent used to block on its task pipe forever, holding the builder's
lock descriptor it had inherited, so every later build waited silently. Now each worker asks the
kernel to kill it when its parent dies (Linux), and a forked child closes its copies of held lock
descriptors at once (:func:`ctl_lightning.io.exclusive_lock`). Workers are forked, not spawned: a
spawned worker would first re-import the parent's main module (train.py imports torch and
Lightning), seconds during which it could not yet die with its parent. They ignore Ctrl-C, which the
parent handles by cancelling the jobs not yet started.

A Ctrl-C that arrives while the parent forks would be lost: Python raises KeyboardInterrupt inside
its own after-fork hooks (logging's lock release), where the exception is printed as "ignored" and
the build runs on to exit 0. So the workers are all forked at once when the pool opens, with Ctrl-C
held back meanwhile and raised after (:func:`ctrl_c_held_back`).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int, initializer: Callable | None, initargs: tuple) -> None:
    prctl = getattr(ctypes.CDLL(None), "prctl", None)  # Linux only
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request above took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


class _Inline:
    """Stands in for a process pool when building with one worker."""

    @staticmethod
    def map(fn, jobs, chunksize: int = 1):
        return map(fn, jobs)


@contextmanager
def ctrl_c_held_back() -> Iterator[None]:
    """Within the block a Ctrl-C is only noted; on leaving it, it takes effect as it would have."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield  # only the main thread may set handlers; an ignored Ctrl-C, or a default one (it kills), is never lost
        return
    noted: list = []
    signal.signal(signal.SIGINT, lambda signum, frame: noted.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if noted:
            previous(signal.SIGINT, noted[0])


@contextmanager
def worker_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> Iterator:
    """Something with ``map(fn, jobs, chunksize)``: a pool of ``workers`` processes, or this process."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield _Inline()
        return
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_die_with_parent,
        initargs=(os.getpid(), initializer, initargs),
    )
    try:
        with ctrl_c_held_back():
            pool.submit(os.getpid).result()  # a first job forks every worker (fork context), all now
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
