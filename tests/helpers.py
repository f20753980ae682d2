"""What tests share besides fixtures: the repository's paths, the tiny training settings, configs
composed like train.py does, and running the scripts as a user would. Fixtures live in conftest.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = Path(os.environ.get("CTL_SHARED_DATA", REPO.parent / "shared" / "data"))

# Small enough for CI, large enough that every category has negatives in the test split.
TINY = [
    "data.source.outfits=150",
    "data.source.scenes=30",
    "data.image_size=32",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "recommendation_examples=2",
    "model.trainable_stages=0",
]


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"real annotation file {path} is not available (set CTL_SHARED_DATA)")
    return path


def compose_config(config_name: str, output_dir: Path, data_dir: Path, overrides: list[str] = ()) -> DictConfig:
    """The config train.py / eval.py would run with, writing into ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name=config_name,
            return_hydra_config=True,
            overrides=[f"paths.root_dir={output_dir}", f"paths.data_dir={data_dir}", *overrides],
        )
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    GlobalHydra.instance().clear()
    return cfg


def train_in_process(output_dir: Path, data_dir: Path, overrides: list[str] = ()) -> dict:
    """What ``python train.py`` runs, in this process: the run's outputs (metrics.json, catalogs,
    ``.hydra/config.yaml``) land in ``output_dir``. A test whose point is not the command line (its
    errors, signals or launchers) saves the 8 s that a fresh process spends importing torch and Lightning."""
    from ctl_lightning.pipeline import train

    cfg = compose_config("train", output_dir, data_dir, overrides)
    (output_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save({k: v for k, v in cfg.items() if k != "hydra"}, output_dir / ".hydra" / "config.yaml")
    return train(cfg)


def import_with_blocked(modules: list[str], blocked: list[str]) -> subprocess.CompletedProcess:
    """Import ``modules`` in a fresh interpreter where each of ``blocked`` fails to import: what a
    dependency boundary test runs (this process has imported everything already)."""
    code = f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\n" + "".join(f"import {m}\n" for m in modules)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def default_sigint() -> None:
    """``preexec_fn`` for children a test interrupts: a job started in the background by a shell
    without job control inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_script(script: str, *overrides: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run train.py / eval.py as a user would, from the repository root."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / script), *overrides], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=environment
    )


def script_paths(output: Path, data: Path) -> list[str]:
    """Overrides that keep a script's data and outputs inside the test's folders."""
    return [f"paths.root_dir={output}", f"paths.data_dir={data}", f"hydra.run.dir={output}/run", f"hydra.sweep.dir={output}/sweep"]
