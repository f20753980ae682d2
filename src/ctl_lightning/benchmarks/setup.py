"""Benchmark inputs built with the project's own code: a synthetic dataset, its store, a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image

from ctl_lightning.data.crops import to_rgb
from ctl_lightning.data.datamodules import TripletsDataModule
from ctl_lightning.data.sources import SyntheticCtl
from ctl_lightning.evaluation.callback import HeldOutMetrics
from ctl_lightning.losses import TripletLoss
from ctl_lightning.models.feature_cache import FeatureCache
from ctl_lightning.models.module import CompatibilityModule


def datamodule(
    root: Path,
    outfits: int,
    image_size: int = 64,
    batch_size: int = 64,
    num_workers: int = 0,
    triplets_per_outfit: int = 8,
    seed: int = 42,
    batching: str = "triplets",
    steps_per_call: int | None = None,
) -> TripletsDataModule:
    source = SyntheticCtl(root, seed=0, outfits=outfits)
    dm = TripletsDataModule(
        source,
        image_size=image_size,
        batch_size=batch_size,
        num_workers=num_workers,
        triplets_per_outfit=triplets_per_outfit,
        seed=seed,
        batching=batching,
        steps_per_call=steps_per_call,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def model(
    backbone: str = "tf_efficientnet_lite0", pretrained: bool = True, seed: int = 0, fused_adam: bool = False, **kwargs
) -> CompatibilityModule:
    """``fused_adam``: conf/optimizer/adam.yaml's ``fused=true`` (one kernel for the whole update)."""
    torch.manual_seed(seed)  # the head's (and a random backbone's) initial weights
    return CompatibilityModule(
        loss=TripletLoss(0.2),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3, fused=fused_adam or None),
        backbone=backbone,
        pretrained=pretrained,
        **kwargs,
    )


def fit_callbacks(dm: TripletsDataModule, cache_dir: str | None = None) -> list[pl.Callback]:
    """What a training run's fit starts with (conf/callbacks/default.yaml): the feature cache (on disk
    in ``cache_dir``, if given), then the untrained baseline; timed fits include them as ``train.py`` does."""
    return [FeatureCache(dm, cache_dir), HeldOutMetrics(dm)]


def crop_files(dm: TripletsDataModule, folder: Path) -> list[Path]:
    """Each product cut from its collage at native resolution and saved as a JPEG, as the seed kept
    them: the input of the seed-style loader. Written once and reused."""
    table = dm.store.table
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{row}.jpg" for row in range(len(table))]
    if all(p.is_file() for p in paths[-10:]) and paths[0].is_file():
        return paths
    for source in dict.fromkeys(table.image_paths):
        rows = np.flatnonzero(table.image_paths == source)
        with Image.open(source) as opened:
            image = to_rgb(opened)
            image.load()
        W, H = image.size
        for row in rows:
            x, y, w, h = table.boxes[row]
            image.crop((int(x * W), int(y * H), int((x + w) * W), int((y + h) * H))).save(paths[row], quality=90)
    return paths
