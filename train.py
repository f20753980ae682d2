"""Train the compatibility model, test it, and write the embedding catalogs.

python train.py                                  # defaults: synthetic data, efficientnet_lite0
python train.py model=resnet18 loss.margin=0.2   # swap a config group, override a value
python train.py -m loss=triplet,softtriple       # a sweep, one directory per job
"""

import hydra
from omegaconf import DictConfig

from ctl_lightning.allocator import keep_freed_memory
from ctl_lightning.errors import friendly_errors
from ctl_lightning.launch import export_submitit_local_ranks  # also registers ${ctl.run_name:}
from ctl_lightning.loggers import finish_wandb
from ctl_lightning.pipeline import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    keep_freed_memory()
    with friendly_errors("train.py"):
        export_submitit_local_ranks()
        try:
            metrics = train(cfg)
        finally:
            finish_wandb()
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
