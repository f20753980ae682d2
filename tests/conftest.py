"""Shared fixtures: one synthetic-data folder for the session and one small complete training run
(synthetic data -> store -> fit -> test -> catalogs) reused by many tests. Helpers are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY, compose_config
from omegaconf import OmegaConf


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One synthetic-data folder for the whole session (generated on first use, then reused)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir) -> Path:
    """Output folder of a complete one-epoch training run on tiny synthetic data."""
    from ctl_lightning.pipeline import train

    output = tmp_path_factory.mktemp("tiny_run")
    cfg = compose_config("train", output, data_dir, TINY)
    (output / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save({k: v for k, v in cfg.items() if k != "hydra"}, output / ".hydra" / "config.yaml")
    train(cfg)
    return output
