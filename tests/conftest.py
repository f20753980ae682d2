"""Shared fixtures: one synthetic-data folder for the session and one small complete training run
(synthetic data -> store -> fit -> test -> catalogs) reused by many tests. Helpers are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY, train_in_process

from ctl_lightning.allocator import keep_freed_memory

# Tests train and predict in this process as train.py does in its own, so with the same allocator: on
# glibc's defaults the headline guard's run took 77 s here against 68 s as `python train.py`.
keep_freed_memory()


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
