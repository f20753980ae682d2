"""Checks of a composed config before any data is generated, read or trained on.

A bad value found late wastes a whole run (``model.embedding_dim=0`` used to fail after fit and test)
or never (``loss.margin=-1`` trains to a loss of exactly 0). Every value a rule names is checked
where the config has it; all failures are reported together, as one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from ctl_lightning.data.datamodules import BATCHINGS
from ctl_lightning.errors import CtlError
from ctl_lightning.losses.mining import MINERS
from ctl_lightning.losses.triplet import DISTANCES
from ctl_lightning.models.subspaces import SUBSPACE_KINDS

MAX_IMAGE_SIZE = 1024  # crops are stored uncompressed: 1024 px is 3 MB a product


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


RULES: tuple[tuple[str, str, Callable[[object], bool]], ...] = (
    ("model.embedding_dim", "an integer > 0", lambda v: _integer(v) and v > 0),
    ("model.hidden_dim", "an integer > 0", lambda v: _integer(v) and v > 0),
    ("model.dropout", "a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
    ("model.embed_batch_size", "an integer > 0", lambda v: _integer(v) and v > 0),
    ("model.trainable_stages", "an integer >= 0", lambda v: _integer(v) and v >= 0),
    ("model.subspaces", f"one of {', '.join(SUBSPACE_KINDS)}", lambda v: v in SUBSPACE_KINDS),
    ("loss.margin", "a number >= 0", lambda v: _number(v) and v >= 0),
    ("loss.mask_weight", "a number >= 0", lambda v: _number(v) and v >= 0),
    ("loss.embed_weight", "a number >= 0", lambda v: _number(v) and v >= 0),
    ("loss.distance", f"one of {', '.join(DISTANCES)}", lambda v: v in DISTANCES),
    ("loss.miner", f"one of {', '.join(MINERS)}", lambda v: v in MINERS),
    ("loss.centers_per_class", "an integer >= 2", lambda v: _integer(v) and v >= 2),
    ("loss.la", "a number > 0", lambda v: _number(v) and v > 0),
    ("loss.gamma", "a number > 0", lambda v: _number(v) and v > 0),
    ("loss.tau", "a number >= 0", lambda v: _number(v) and v >= 0),
    ("optimizer.lr", "a number > 0", lambda v: _number(v) and v > 0),
    ("optimizer.weight_decay", "a number >= 0", lambda v: _number(v) and v >= 0),
    ("optimizer.momentum", "a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
    ("data.image_size", f"null or an integer in [8, {MAX_IMAGE_SIZE}]", lambda v: v is None or (_integer(v) and 8 <= v <= MAX_IMAGE_SIZE)),
    ("data.batch_size", "an integer > 0", lambda v: _integer(v) and v > 0),
    ("data.eval_batch_size", "an integer > 0", lambda v: _integer(v) and v > 0),
    ("data.num_workers", "an integer >= 0", lambda v: _integer(v) and v >= 0),
    ("data.triplets_per_outfit", "an integer > 0", lambda v: _integer(v) and v > 0),
    ("data.batching", f"one of {', '.join(BATCHINGS)}", lambda v: v in BATCHINGS),
    ("data.outfits_per_batch", "an integer >= 2", lambda v: _integer(v) and v >= 2),
    ("data.items_per_outfit", "an integer >= 2", lambda v: _integer(v) and v >= 2),
    ("data.val_fraction", "a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
    ("data.source.outfits", "an integer >= 10", lambda v: _integer(v) and v >= 10),
    ("data.source.styles", "an integer >= 2", lambda v: _integer(v) and v >= 2),
    ("data.source.scenes", "an integer > 0", lambda v: _integer(v) and v > 0),
    ("data.source.on_error", "raise or skip", lambda v: v in ("raise", "skip")),
    ("trainer.max_epochs", "an integer > 0 (or -1: no limit)", lambda v: _integer(v) and (v > 0 or v == -1)),
)


def _incompatibility(cfg: DictConfig) -> str | None:
    """Why the loss cannot train on the data module, if it cannot."""
    data_target, loss_target = OmegaConf.select(cfg, "data._target_"), OmegaConf.select(cfg, "loss._target_")
    if not data_target or not loss_target:
        return None
    data_class, loss_class = get_class(data_target), get_class(loss_target)
    has_outfits = hasattr(data_class, "num_classes")  # training outfits, the classes of class losses
    if cfg.get("task_name") == "train" and not has_outfits:
        return f"data={data_class.__name__} has no training outfits: train.py needs a CTL data config (ctl, synthetic, toy)"
    if getattr(loss_class, "uses_classes", False) and not has_outfits:
        return f"loss={loss_class.__name__} takes its classes from training outfits, which data={data_class.__name__} does not have"
    type_aware_model = OmegaConf.select(cfg, "model.subspaces") is not None
    if type_aware_model != getattr(loss_class, "uses_subspaces", False):
        return (
            "model=type_aware and loss=type_aware go together (its triplet loss measures each triplet in a category-pair "
            f"subspace); got model {OmegaConf.select(cfg, 'model._target_')} with loss={loss_class.__name__}"
        )
    return None


def validate(cfg: DictConfig) -> None:
    """Raise one :class:`CtlError` listing every bad value of ``cfg``; return if there is none."""
    problems = []
    for key, wanted, ok in RULES:
        value = OmegaConf.select(cfg, key, default="???")
        if value == "???":
            continue  # not in this config, or filled in at run time
        if not ok(value):
            problems.append(f"{key}={value!r} (must be {wanted})")
    reason = _incompatibility(cfg)
    if reason:
        problems.append(reason)
    if problems:
        raise CtlError(f"invalid config: {'; '.join(problems)}")
