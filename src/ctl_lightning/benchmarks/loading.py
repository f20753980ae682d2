"""The data path: the product-store loader against a seed-style loader, and loader overhead in training.

The seed's Dataset opened each triplet member's JPEG with PIL, then applied Resize, ToTensor and
Normalize. The product store reads uint8 crops by row id from a memory map; to compare like with
like, its batches are turned into the same normalized float tensors here (the model does that step
on the accelerator in training).
"""

from __future__ import annotations

import time

import numpy as np
import pytorch_lightning as pl
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from ctl_lightning.data.batches import RowsDataset, TripletCollate
from ctl_lightning.models.module import normalization, normalize_images
from ctl_lightning.timing import measure_interleaved, rate

MEAN = STD = (0.5, 0.5, 0.5)  # tf_efficientnet_lite0's


class SeedStyleTriplets(Dataset):
    def __init__(self, triplets: np.ndarray, paths, size: int):
        self.triplets, self.paths = triplets, paths
        self.transform = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int):
        return tuple(self.transform(Image.open(self.paths[row]).convert("RGB")) for row in self.triplets[index])


SCALE, BIAS = normalization(MEAN, STD)


def _consume(loader: DataLoader, n_batches: int, convert) -> int:
    images = 0
    for i, batch in enumerate(loader):
        if i == n_batches:
            break
        images += convert(batch)
    return images


def loader_throughput(dm, crop_paths, batches: dict, workers: int, repeats: int) -> dict:
    """Triplet images delivered per second (3 per triplet), both loaders at the same batch size and workers."""
    triplets, size, batch_size = dm.train_triplets, dm.store.size, dm.batch_size
    seed_loader = DataLoader(SeedStyleTriplets(triplets, crop_paths, size), batch_size=batch_size, shuffle=True, num_workers=workers)
    store_loader = DataLoader(
        RowsDataset(triplets),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=TripletCollate(dm.store, dm.labels, dm.categories),
    )
    plan = {
        "seed_style": (seed_loader, lambda b: 3 * len(b[0]), batches["seed"]),
        "product_store": (
            store_loader,
            lambda b: (normalize_images(b["images"], SCALE, BIAS), 3 * len(b["triplets"]))[1],
            batches["store"],
        ),
    }
    timings = measure_interleaved(
        {name: lambda loader=loader, convert=convert, n=n: _consume(loader, n, convert) for name, (loader, convert, n) in plan.items()},
        repeats=repeats,
    )
    results = {}
    for name, (_loader, _convert, n) in plan.items():
        results[name] = {**rate(n * batch_size * 3, timings[name]), "batches": n}
    results["ratio"] = results["product_store"]["per_s"] / results["seed_style"]["per_s"]
    results["workers"], results["batch_size"], results["image_size"] = workers, batch_size, size
    return results


class _StepTimer(pl.Callback):
    def __init__(self, skip: int):
        self.skip, self.times, self._start = skip, [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.skip:
            self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.times.append(time.perf_counter() - self._start)


class _Batches(Dataset):
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


def _fit_seconds(model, loader, steps: int, skip: int) -> float:
    timer = _StepTimer(skip)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=steps + skip,
        limit_val_batches=0,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, train_dataloaders=loader)
    return timer.times[0]


def training_overhead(dm, make_model, steps: int, repeats: int) -> dict:
    """Training steps/s fed by the real DataModule against the same batches already in memory."""
    skip = 2
    loader = dm.train_dataloader()
    in_memory = []
    for i, batch in enumerate(loader):
        if i == steps + skip:
            break
        in_memory.append(batch)
    memory_loader = DataLoader(_Batches(in_memory), batch_size=None)
    real, memory = [], []
    model = make_model()
    for _ in range(repeats):
        real.append(_fit_seconds(model, dm.train_dataloader(), steps, skip))
        memory.append(_fit_seconds(model, memory_loader, steps, skip))
    real_s, memory_s = float(np.median(real)), float(np.median(memory))
    return {
        "steps": steps,
        "datamodule_steps_per_s": steps / real_s,
        "in_memory_steps_per_s": steps / memory_s,
        "ratio": memory_s / real_s,
        "datamodule_runs_s": real,
        "in_memory_runs_s": memory,
        "num_workers": dm.num_workers,
    }
