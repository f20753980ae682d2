"""Logger factories for the ``logger/`` configs."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

from pytorch_lightning.loggers import WandbLogger

log = logging.getLogger(__name__)


def wandb_credentials_configured() -> bool:
    """True when W&B could authenticate: WANDB_API_KEY, or an api.wandb.ai entry from `wandb login`."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(offline: bool | None = None, save_dir: str = ".", **kwargs) -> WandbLogger:
    """A ``WandbLogger`` that works without network or account: offline unless credentials exist.

    ``offline=None`` decides by credentials; ``True``/``False`` force the mode. An offline run is
    written under ``save_dir/wandb`` and can be uploaded later with ``wandb sync``.
    """
    if offline is None:
        offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun") or not wandb_credentials_configured()
        if offline:
            log.info("W&B: no credentials configured, logging offline (upload later with `wandb sync`)")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(offline=offline, save_dir=save_dir, **kwargs)


def finish_wandb() -> None:
    """Close the W&B run so the next job of a multirun starts its own."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
