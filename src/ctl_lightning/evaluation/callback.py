"""The held-out metrics of a run, as a callback: the untrained baseline at the start of fit and the
trained model's metrics at test, on the datamodule's :class:`~ctl_lightning.data.datamodules.EvaluationSets`.

Scoring needs the model's embeddings and the data's held-out sets, and belongs to neither: the model's
``test_step`` returns embeddings, the datamodule builds the sets, and this callback, handed the
datamodule by the pipeline, scores the one on the other. The baseline is kept in every checkpoint
(``baseline_metrics``), so a resumed run or ``eval.py`` reports the same one.
"""

from __future__ import annotations

import copy

import numpy as np
import pytorch_lightning as pl
import torch

from ctl_lightning.evaluation.metrics import score_held_out


class HeldOutMetrics(pl.Callback):
    def __init__(self, datamodule: pl.LightningDataModule):
        self.datamodule = datamodule
        self.baseline: dict[str, float] = {}
        self._test_outputs: list[dict[str, torch.Tensor]] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The untrained model's metrics, measured once (a resumed run has them from its checkpoint);
        runs after the feature cache's hook, so the baseline reuses its features."""
        sets = getattr(self.datamodule, "evaluation", None)
        if sets is None or self.baseline:
            return  # no held-out sets to measure a baseline on, or measured already
        rows = np.sort(sets.rows)
        features = pl_module.store_features(self.datamodule.pixels, rows, "baseline features")
        self.baseline = score_held_out(features, features, torch.from_numpy(rows), sets)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._test_outputs.append(outputs)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        outputs = {k: torch.cat([o[k] for o in self._test_outputs]) for k in ("row_ids", "similar", "compatible")}
        self._test_outputs.clear()
        if trainer.world_size > 1:  # every rank gathers all test products and computes the same metrics
            outputs = {k: v.flatten(0, 1) for k, v in pl_module.all_gather(outputs).items()}
        subspaces = pl_module.pair_subspaces()
        if subspaces is not None:  # the metrics run on the CPU, where the gathered embeddings are
            subspaces = copy.deepcopy(subspaces).cpu()
        results = score_held_out(outputs["compatible"], outputs["similar"], outputs["row_ids"].cpu(), self.datamodule.evaluation, subspaces)
        metrics = {f"test/{k}": v for k, v in results.items()}
        metrics.update({f"baseline/{k}": v for k, v in self.baseline.items()})
        pl_module.log_dict({k: v for k, v in metrics.items() if np.isfinite(v)}, sync_dist=False)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["baseline_metrics"] = dict(self.baseline)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.baseline = dict(checkpoint.get("baseline_metrics", {}))
