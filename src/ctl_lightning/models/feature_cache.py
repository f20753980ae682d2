"""The frozen-backbone feature cache, as a callback between the model and its product store.

With a frozen backbone and no augmentation the frozen part of the backbone gives every product the
same features every epoch, so they are computed once, before fit, test or predict, and the model
trains and embeds from them: batches then leave their pixels out. The cache belongs to neither side:
the model says whether it is exact (:meth:`CompatibilityModule.uses_feature_cache`) and computes
features; the datamodule holds the store; this callback, handed the datamodule by the pipeline,
joins them.

It is keyed by the store's fingerprint and the frozen weights' fingerprint: predicting another
dataset, or testing a checkpoint whose backbone differs from the weights the cache was computed
with, computes it again.
"""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl

from ctl_lightning.models.fingerprint import state_fingerprint

log = logging.getLogger(__name__)


class FeatureCache(pl.Callback):
    def __init__(self, datamodule: pl.LightningDataModule):
        self.datamodule = datamodule
        self.key: tuple[str, str] | None = None  # (store fingerprint, frozen weights fingerprint) of the cache
        self.seconds = 0.0  # how long computing it took, the last time

    def _refresh(self, pl_module: pl.LightningModule) -> None:
        store = self.datamodule.store
        if not pl_module.uses_feature_cache():
            return
        key = (store.fingerprint, state_fingerprint(pl_module.frozen_state()))
        if key != self.key:
            start = time.perf_counter()
            pl_module.cached_features = pl_module.embed_store(
                self.datamodule.pixels, store.table.positions, "feature cache", frozen_only=True
            )
            self.key = key
            self.seconds = time.perf_counter() - start
            log.info(f"feature cache: {tuple(pl_module.cached_features.shape)} backbone features, computed once")
        self.datamodule.load_images = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._refresh(pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._refresh(pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._refresh(pl_module)
