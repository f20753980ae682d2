"""Faults placed where a timed kill from outside would land anywhere, for tests/test_faults.py.

- :class:`KillAt`, added on the command line of train.py / eval.py
  (``+callbacks.kill._target_=fault_injection.KillAt +callbacks.kill.hook=predict_batch_end``, with
  ``tests/`` on PYTHONPATH), lands a kill -9 at an exact point of fit or predict.
- :func:`slow_data_cli` runs ``ctl-data`` with each image decode slowed, so that a build lasts long
  enough for a signal sent "while crops are being written" to arrive before the build ends, on a host
  of any speed.
"""

from __future__ import annotations

import os
import signal
import time

import pytorch_lightning as pl

from ctl_lightning.cli import data as data_cli
from ctl_lightning.data import store

DECODE_DELAY_S = 0.05
_real_decode = store._decode


def slowed_decode(job):
    """The store's decoder, ``DECODE_DELAY_S`` slower per image. Module-level, so a pool can pickle it."""
    time.sleep(DECODE_DELAY_S)
    return _real_decode(job)


def slow_data_cli() -> None:
    """``ctl-data`` with :func:`slowed_decode`: ``python -c "import fault_injection; fault_injection.slow_data_cli()" prepare ...``."""
    store._decode = slowed_decode  # forked decoder workers inherit the patch
    data_cli.main()


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
