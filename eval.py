"""Test a checkpoint and write its catalogs, as train.py does at the end of training.

    python eval.py ckpt_path=outputs/train/runs/<time>/checkpoints/last.ckpt
    python eval.py ckpt_path=... data=synthetic_stl      # catalogs of another product source

The data, model and loss configs are those of the training run that wrote the checkpoint (carried
by the checkpoint itself) unless given on the command line.
"""

import hydra
from omegaconf import DictConfig

from ctl_lightning.allocator import keep_freed_memory
from ctl_lightning.errors import friendly_errors
from ctl_lightning.launch import export_submitit_local_ranks  # also registers ${ctl.run_name:}
from ctl_lightning.loggers import finish_wandb
from ctl_lightning.pipeline import evaluate, with_training_config


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    keep_freed_memory()
    with friendly_errors("eval.py"):
        export_submitit_local_ranks()
        try:
            evaluate(with_training_config(cfg))
        finally:
            finish_wandb()


if __name__ == "__main__":
    main()
