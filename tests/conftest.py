"""Shared fixtures: one synthetic-data folder for the session and one small complete training run
(synthetic data -> store -> fit -> test -> catalogs) reused by many tests. Helpers are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import TINY, train_in_process

from ctl_lightning.allocator import keep_freed_memory

# Tests train and predict in this process as train.py does in its own, so with the same allocator: on
# glibc's defaults the headline guard's run took 77 s here against 68 s as `python train.py`.
keep_freed_memory()


def share_the_cores_among_workers() -> None:
    """Under pytest-xdist (`make test`), each worker and the processes its tests start get their share
    of the cores. With torch's default of one thread per core in every worker, two workers on 2 cores
    took 22 min 49 s of pytest (session 13), longer than in series; with one thread each, 11 min 16 s
    (session 17)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = str(max(1, cores // workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
        torch.set_num_threads(int(threads))


share_the_cores_among_workers()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One synthetic-data folder for the whole session (generated on first use, then reused)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir) -> Path:
    """Output folder of a complete one-epoch training run on tiny synthetic data."""
    output = tmp_path_factory.mktemp("tiny_run")
    train_in_process(output, data_dir, TINY)
    return output
