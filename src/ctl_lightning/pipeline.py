"""What train.py and eval.py run: Hydra ``instantiate`` calls in the order Lightning needs them.

Kept free of model and data logic (that lives in the objects the configs name), in the manner of the
lightning-hydra-template: compose -> instantiate -> fit -> test -> predict -> report.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ctl_lightning.config_checks import validate
from ctl_lightning.errors import CtlError
from ctl_lightning.evaluation.ceilings import oracle_metrics
from ctl_lightning.evaluation.metrics import HELD_OUT_METRICS
from ctl_lightning.io import write_json
from ctl_lightning.models.checkpoint import CONFIG_GROUPS, RUN_CONFIG, load_checkpoint, saved_run_config
from ctl_lightning.run_summary import log_recommendation_grid, print_metric_table

log = logging.getLogger(__name__)


class RunConfigInCheckpoint(pl.Callback):
    """Writes the run's data, model and loss configs into every checkpoint (read by ``models.checkpoint``)."""

    def __init__(self, cfg: DictConfig):
        self.config = {group: OmegaConf.to_container(cfg[group], resolve=False) for group in CONFIG_GROUPS if group in cfg}

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[RUN_CONFIG] = self.config


def runtime_values(node: DictConfig, **available: Any) -> dict[str, Any]:
    """Values a config marks ``???`` because they are only known at run time (e.g. SoftTriple's
    ``num_classes``); only those are filled in, so every other value stays the config's."""
    # `k in node` is False for a DictConfig key whose value is ???: the keys view lists it.
    return {k: v() if callable(v) else v for k, v in available.items() if k in node.keys() and OmegaConf.is_missing(node, k)}  # noqa: SIM118


def resolved_run_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config, resolved, without Hydra's own section (present when composed by tests)."""
    return {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in cfg.items()
        if key != "hydra"
    }


def _instantiate_dict(node: DictConfig | None, **available: Any) -> list:
    """Callbacks and loggers are dicts of named configs, so each can be added or removed by name; an
    entry marking a value ``???`` (a callback's ``datamodule``) gets it from ``available``."""
    return [
        instantiate(entry, **runtime_values(entry, **available))
        for entry in (node or {}).values()
        if entry is not None and "_target_" in entry
    ]


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule, pl.Trainer]:
    validate(cfg)
    if cfg.get("ckpt_path"):
        load_checkpoint(cfg.ckpt_path)  # a damaged checkpoint is found before any data is built
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    loss = instantiate(
        cfg.loss, **runtime_values(cfg.loss, num_classes=lambda: datamodule.num_classes, embedding_dim=cfg.model.embedding_dim)
    )
    with open_dict(cfg):  # written into the config itself, so that checkpoints carry the values
        cfg.model.update(runtime_values(cfg.model, categories=lambda: datamodule.categories))
    model = instantiate(cfg.model, loss=loss, optimizer=instantiate(cfg.optimizer))
    if not datamodule.image_size:  # data.image_size: null is the backbone's own input size
        datamodule.image_size = model.input_size
    loggers = _instantiate_dict(cfg.get("logger"))
    callbacks = [*_instantiate_dict(cfg.get("callbacks"), datamodule=datamodule), RunConfigInCheckpoint(cfg)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(resolved_run_config(cfg))
    return datamodule, model, trainer


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def ceiling(datamodule: pl.LightningDataModule) -> dict[str, float]:
    """The oracle's metrics on the run's held-out sets, where the data knows its latent truth
    (the benchmark world); the table then shows how far the model is from the task's ceiling."""
    sets = getattr(datamodule, "evaluation", None)
    return {} if sets is None else {f"oracle/{k}": v for k, v in oracle_metrics(sets, datamodule.source.root).items()}


def write_results(cfg: DictConfig, trainer: pl.Trainer, tested: dict[str, Any], extra: dict[str, Any]) -> dict[str, float | None]:
    """Print the metric table, write ``metrics.json`` and the recommendation picture; return the metrics."""
    logged = {k: _finite_or_none(v) for k, v in tested.items()}
    metrics: dict[str, float | None] = {
        f"{prefix}/{key}": logged.get(f"{prefix}/{key}") for prefix in ("test", "baseline", "oracle") for key in HELD_OUT_METRICS
    }
    metrics.update(extra)
    output_dir = Path(cfg.paths.output_dir)
    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
        print_metric_table(metrics, HELD_OUT_METRICS)
        log_recommendation_grid(output_dir / "catalogs", trainer.loggers, cfg.get("recommendation_examples", 4), cfg.get("seed") or 0)
    return metrics


def train(cfg: DictConfig) -> dict[str, float | None]:
    datamodule, model, trainer = build(cfg)
    categories = cfg.model.get("categories")
    if categories is not None and list(categories) != datamodule.categories:
        # Training batches name categories by their index in the dataset's list (data/batches.py).
        raise CtlError(
            f"model.categories must be the dataset's categories, in order, to train ({', '.join(datamodule.categories)}); "
            "leave it ??? to take them from the data"
        )
    with warnings.catch_warnings():
        # A frozen backbone stays in eval mode on purpose: its BatchNorm statistics are the pretrained ones.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    monitored = [c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
    best = monitored[0] if monitored else None
    best_val = float(best.best_model_score) if best is not None and best.best_model_score is not None else None
    best_path = best.best_model_path if best is not None and best.best_model_path else None
    tested = trainer.test(model, datamodule=datamodule, ckpt_path=best_path, verbose=False)[0]
    trainer.predict(model, datamodule=datamodule, ckpt_path=best_path, return_predictions=False)
    tested.update(ceiling(datamodule) if trainer.is_global_zero else {})
    return write_results(
        cfg, trainer, tested, {"val/triplet_accuracy": best_val, "best_checkpoint": best_path, "epochs": trainer.current_epoch}
    )


def with_training_config(cfg: DictConfig, groups: tuple[str, ...] = CONFIG_GROUPS) -> DictConfig:
    """``cfg`` with the data/model/loss sections of the run that wrote ``cfg.ckpt_path`` (carried by
    the checkpoint itself), except the groups overridden on this command line. The model is not
    re-downloaded: the checkpoint holds its weights (and the untrained baseline)."""
    checkpoint = Path(str(cfg.ckpt_path))
    training = saved_run_config(load_checkpoint(checkpoint), checkpoint)
    overridden = set()
    if HydraConfig.initialized():
        overridden = {o.split("=")[0].lstrip("+~").split(".")[0] for o in HydraConfig.get().overrides.task}
    cfg = cfg.copy()
    with open_dict(cfg):
        if training is not None:
            for group in groups:
                if group not in overridden and group in training:
                    cfg[group] = training[group]
        else:
            log.warning(
                f"{checkpoint} carries no run config and has no .hydra/config.yaml beside its run: using this command line's data/model/loss configs"
            )
        cfg.model.pretrained = False
        cfg.model.weights = None
    return cfg


def evaluate(cfg: DictConfig) -> dict[str, float | None]:
    datamodule, model, trainer = build(cfg)
    tested = {}
    if datamodule.has_test_sets:
        tested = trainer.test(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, verbose=False)[0]
        tested.update(ceiling(datamodule) if trainer.is_global_zero else {})
    trainer.predict(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, return_predictions=False)
    return write_results(cfg, trainer, tested, {"checkpoint": str(cfg.ckpt_path)})
