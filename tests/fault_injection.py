"""A callback that kills its own process with SIGKILL at a chosen Lightning hook, for tests/test_faults.py.

Added on the command line of train.py / eval.py (``+callbacks.kill._target_=fault_injection.KillAt
+callbacks.kill.hook=predict_batch_end``, with ``tests/`` on PYTHONPATH), it lands a kill -9 at an
exact point of fit or predict, where a timed kill from outside would land anywhere.
"""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class KillAt(pl.Callback):
    """``hook``: ``train_epoch_start`` (from epoch ``epoch`` on) or ``predict_batch_end``."""

    def __init__(self, hook: str, epoch: int = 0):
        self.hook, self.epoch = hook, epoch

    def _kill_at(self, hook: str, trainer: pl.Trainer) -> None:
        if hook == self.hook and trainer.current_epoch >= self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._kill_at("train_epoch_start", trainer)

    def on_predict_batch_end(self, trainer: pl.Trainer, *args) -> None:
        self._kill_at("predict_batch_end", trainer)
