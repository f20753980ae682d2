"""What train.py and eval.py need to run as one of several processes started by torchrun, SLURM or
submitit (README "Scaling out"): a run directory every process of a run agrees on, the launcher's
task counts taken from the trainer config, and submitit's local tasks made visible to Lightning.

Importing this module registers the resolvers the configs use (``${ctl.run_name:}`` and friends).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ctl_lightning.errors import CtlError, friendly_errors


def run_name() -> str:
    """The name of a single run's directory: its start time, or, when a launcher started several
    processes for it, the launcher's id of the run, so that every rank resolves the same directory
    (Hydra's ``${now:}`` resolves separately in each process and would give each rank its own)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "TORCHELASTIC_RUN_ID" in os.environ:
        run_id = os.environ["TORCHELASTIC_RUN_ID"]
        if run_id == "none":
            raise CtlError(
                "torchrun's ranks share no run id (static rendezvous): add --standalone (one machine) or "
                "--rdzv-id=ID --rdzv-backend=c10d (several), or give hydra.run.dir=DIR"
            )
        return f"torchrun-{run_id}"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ:
        return f"slurm-{os.environ['SLURM_JOB_ID']}.{os.environ['SLURM_STEP_ID']}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")


def tasks_per_node(devices: int | str) -> int:
    """A launcher's tasks per node for ``trainer.devices``: one task per device (``-1``: every GPU of
    the machine the launcher runs on, which a SLURM login node may not have)."""
    if str(devices) not in ("-1", "auto"):
        count = int(devices) if str(devices).isdigit() else 0
        if count < 1:
            raise CtlError(f"trainer.devices={devices}: give the number of devices per node")
        return count
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise CtlError(f"trainer.devices={devices} counts this machine's GPUs and it has none: give trainer.devices=N")
    return count


def gpus_per_node(accelerator: str, devices: int | str) -> int:
    """GPUs a launcher reserves on each node: one per task on a GPU, none on the CPU."""
    return tasks_per_node(devices) if accelerator in ("gpu", "cuda", "auto") else 0


def export_submitit_local_ranks() -> None:
    """Under submitit's local executor each task of a job is one rank, but only SLURM's variables are
    known to Lightning: export torch.distributed's (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``) with submitit's own helper, so that Lightning joins these tasks
    instead of starting processes of its own. Under SLURM, Lightning's ``SLURMEnvironment`` does this."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) < 2:
        return
    from submitit.helpers import TorchDistributedEnvironment

    # Each task keeps every device visible: Lightning picks the one of its local rank.
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def _reported_here():
    """:func:`friendly_errors` under the running program's name, for code that Hydra calls before an
    entry point's own handler is in place."""
    return friendly_errors(Path(sys.argv[0]).name)


class LauncherCheck(Callback):
    """A Hydra callback (conf/hydra/default.yaml) that resolves the launcher's task counts before
    Hydra builds the launcher, so that a ``trainer.devices`` they cannot use (``-1`` on a machine
    without GPUs) is a one-line error rather than Hydra's traceback from inside the sweeper."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        launcher = config.hydra.launcher
        with _reported_here():
            for key in ("tasks_per_node", "gpus_per_node"):
                if key in launcher:
                    launcher[key]  # reading a key resolves it


def _resolved_run_name() -> str:
    """:func:`run_name` as the configs' resolver. Hydra resolves hydra.run.dir before an entry point's
    own :func:`friendly_errors` can catch anything and shows an error there as a long traceback, so
    this resolver reports the user's mistake itself: one line, exit status 2. The name depends on the
    environment only, so it fails alike wherever it is resolved. The task-count resolvers raise
    instead: OmegaConf also evaluates them while merging configs, ignoring failures there, before the
    command line's trainer.devices replaces trainer=ddp's -1."""
    with _reported_here():
        return run_name()


OmegaConf.register_new_resolver("ctl.run_name", _resolved_run_name, use_cache=True, replace=True)
OmegaConf.register_new_resolver("ctl.tasks_per_node", tasks_per_node, replace=True)
OmegaConf.register_new_resolver("ctl.gpus_per_node", gpus_per_node, replace=True)
