"""Checkpoints that describe themselves, opened with checks.

A checkpoint carries the data, model and loss configs of the run that wrote it (unresolved, so
``${paths.data_dir}`` follows the machine it is used on). ``eval.py`` and the image embedder then need
the checkpoint alone, not the run folder's ``.hydra/`` next to it, and a run folder can be moved.

The callback that writes them lives with the training pipeline, so that reading a checkpoint (the
server, the recommender) does not import Lightning.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ctl_lightning.errors import CtlError

RUN_CONFIG = "ctl_run_config"
CONFIG_GROUPS = ("data", "model", "loss")


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint with a state dict of finite tensors, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CtlError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CtlError(f"{path}: not a readable checkpoint ({reason[:200]})") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CtlError(f"{path}: not a ctl-lightning checkpoint (no state_dict of tensors)")
    damaged = [name for name, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if damaged:
        raise CtlError(f"{path}: weights {', '.join(damaged[:3])} hold NaN or inf; use an earlier checkpoint")
    return checkpoint


def saved_run_config(checkpoint: dict, path: Path) -> DictConfig | None:
    """The configs a checkpoint carries; for an older checkpoint, its run's ``.hydra/config.yaml``."""
    if isinstance(checkpoint.get(RUN_CONFIG), dict):
        return OmegaConf.create(checkpoint[RUN_CONFIG])
    saved = Path(path).parent.parent / ".hydra" / "config.yaml"
    return OmegaConf.load(saved) if saved.is_file() else None
