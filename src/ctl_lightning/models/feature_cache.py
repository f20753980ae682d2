"""The frozen-backbone feature cache, as a callback between the model and its product store.

With a frozen backbone and no augmentation the frozen part of the backbone gives every product the
same features every epoch, so they are computed once, before fit, test or predict, and the model
trains and embeds from them: batches then leave their pixels out. The cache belongs to neither side:
the model says whether it is exact (:meth:`CompatibilityModule.uses_feature_cache`) and computes
features; the datamodule holds the store; this callback, handed the datamodule by the pipeline,
joins them.

It is keyed by the store's fingerprint and the frozen weights' fingerprint (with the input
normalisation): predicting another dataset, or testing a checkpoint whose backbone differs from the
weights the cache was computed with, computes it again.

With a ``directory`` (``callbacks.feature_cache.directory=...``) the cache also lives on disk, one
``<store>-<weights>.npy`` per key, so that runs on the same store and frozen backbone (a head-only
sweep, the seeds of an experiment) compute it once between them. A file that does not load, or does
not match the store, is computed again, with a warning.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from ctl_lightning.io import write_bytes_atomic
from ctl_lightning.models.fingerprint import state_fingerprint

log = logging.getLogger(__name__)


class FeatureCache(pl.Callback):
    def __init__(self, datamodule: pl.LightningDataModule, directory: str | Path | None = None):
        self.datamodule = datamodule
        self.directory = Path(directory) if directory else None
        self.key: tuple[str, str] | None = None  # (store fingerprint, frozen weights fingerprint) of the cache
        self.seconds = 0.0  # how long computing (or loading) it took, the last time (bench/gpu.sh reports it)

    def _refresh(self, pl_module: pl.LightningModule) -> None:
        store = self.datamodule.store
        if not pl_module.uses_feature_cache():
            return
        frozen = pl_module.frozen_state() | {"input_scale": pl_module.input_scale, "input_bias": pl_module.input_bias}
        key = (store.fingerprint, state_fingerprint(frozen))
        if key != self.key:
            start = time.perf_counter()
            path = self.directory / f"{key[0]}-{key[1]}.npy" if self.directory else None
            features = self._load(path, len(store)) if path else None
            if features is None:
                features = pl_module.embed_store(self.datamodule.pixels, store.table.positions, "feature cache", frozen_only=True)
                saved = self._save(path, features) if path else ""
                log.info(
                    f"feature cache: {tuple(features.shape)} backbone features, computed once in {time.perf_counter() - start:.1f} s{saved}"
                )
            pl_module.cached_features = features.to(pl_module.device)
            self.key = key
            self.seconds = time.perf_counter() - start
        self.datamodule.load_images = False

    @staticmethod
    def _load(path: Path, rows: int) -> torch.Tensor | None:
        """The features saved at ``path``, or None (with a warning if the file is there but unusable)."""
        if not path.is_file():
            return None
        try:
            features = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            log.warning(f"feature cache: {path} does not load ({error}); computing it again")
            return None
        if features.dtype != np.float32 or len(features) != rows:
            log.warning(
                f"feature cache: {path} holds {features.dtype} {features.shape}, not float32 for {rows} products; computing it again"
            )
            return None
        log.info(f"feature cache: {features.shape} backbone features loaded from {path}")
        return torch.from_numpy(features)

    @staticmethod
    def _save(path: Path, features: torch.Tensor) -> str:
        """Write ``features`` to ``path`` atomically; a note for the log (a failure only warns)."""
        buffer = io.BytesIO()
        np.save(buffer, features.cpu().numpy())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, buffer.getbuffer())
        except OSError as error:
            log.warning(f"feature cache: could not save it to {path} ({error}); it stays in memory")
            return ""
        return f", saved to {path}"

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._refresh(pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._refresh(pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._refresh(pl_module)
