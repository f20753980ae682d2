"""Datasets, collation and sampling over the product store.

Items are row ids; collation turns a list of them into one batch read from the memory-mapped store.
A triplet batch embeds each distinct product once: ``images`` holds the unique products and
``triplets`` indexes anchors, positives and negatives into them, since triplets share images.
Outfit-grouped batches (``data.batching=outfits``) hold a few items of each of a few outfits, so that
their products form many triplets, and a miner (``loss.miner``) has in-batch positives to choose from.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, RandomSampler

from ctl_lightning.data.store import ProductStore
from ctl_lightning.losses.mining import outfit_triplets


class RowsDataset(Dataset):
    """Items are rows of an int64 array: a triplet ``(a, p, n)`` or a single product row id."""

    def __init__(self, rows: np.ndarray):
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.rows[index]

    def __getitems__(self, indices: list[int]) -> np.ndarray:
        """A whole batch in one fancy index (the DataLoader asks for it so): the per-item calls cost
        more than the step itself when a batch is ids only (``data.device_store``)."""
        return self.rows[indices]


def category_codes(store: ProductStore, categories: list[str]) -> np.ndarray:
    """Each store row's category as its index in ``categories`` (the dataset's sorted categories)."""
    code = {name: i for i, name in enumerate(categories)}
    return np.array([code[name] for name in store.table.categories.tolist()], dtype=np.int64)


class _TrainingCollate:
    """What training batches share: the distinct products' row ids, outfit classes, category codes
    and pixels, and triplets indexing them.

    A category code is the category's index in ``categories``, the dataset's sorted categories
    (``datamodule.categories``): the miners keep negatives in the positive's category, and a
    type-aware model, whose ``model.categories`` are that list, picks each pair's subspace by them.
    """

    def __init__(self, store: ProductStore, labels: np.ndarray, categories: list[str], load_images: bool = True):
        self.store = store
        self.labels = labels
        self.categories = category_codes(store, categories)
        self.load_images = load_images

    def _batch(self, rows: np.ndarray, triplets: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = {
            "row_ids": torch.from_numpy(rows),
            "labels": torch.from_numpy(self.labels[rows]),
            "categories": torch.from_numpy(self.categories[rows]),
            "triplets": triplets,
        }
        if self.load_images:
            batch["images"] = torch.from_numpy(self.store.read(rows))
        return batch


class TripletCollate(_TrainingCollate):
    """``[B, 3]`` triplets -> ``{row_ids [U], labels [U], categories [U], triplets [B, 3], images [U, H, W, 3] uint8}``.

    With ``dedup=False`` every triplet member is its own entry (U = 3B); the loss is the same, only
    more images are embedded. ``load_images=False`` leaves the pixels out when the model embeds from
    its feature cache.
    """

    def __init__(self, store: ProductStore, labels: np.ndarray, categories: list[str], load_images: bool = True, dedup: bool = True):
        super().__init__(store, labels, categories, load_images)
        self.dedup = dedup

    def __call__(self, samples: list[np.ndarray]) -> dict[str, torch.Tensor]:
        triplets = np.asarray(samples)
        if self.dedup:
            rows, inverse = np.unique(triplets, return_inverse=True)
        else:
            rows, inverse = triplets.reshape(-1), np.arange(triplets.size)
        return self._batch(rows, torch.from_numpy(inverse.reshape(-1, 3)))


def triplet_rows(samples: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """``[B, 3]`` triplets -> ``{triplet_rows [B, 3]}``: with the store on the device, the batch is
    deduplicated, labelled and given its pixels there (:func:`~ctl_lightning.data.device_store.deduplicate`)."""
    return {"triplet_rows": torch.from_numpy(np.asarray(samples, dtype=np.int64))}


class StepRows:
    """``[K * B, 3]`` triplets -> ``{step_rows [K * B, 3], step_size: B}``: several training steps'
    triplets as sampled, every member its own row, for the fixed-shape step
    (``model.steps_per_call``, :mod:`ctl_lightning.models.member_steps`), which splits them into
    batches of ``step_size``; the epoch's last call may hold fewer."""

    def __init__(self, step_size: int):
        self.step_size = step_size

    def __call__(self, samples: list[np.ndarray]) -> dict[str, torch.Tensor | int]:
        return {"step_rows": torch.from_numpy(np.asarray(samples, dtype=np.int64)), "step_size": self.step_size}


class OutfitCollate(_TrainingCollate):
    """Outfit groups (``[K]`` row ids of one outfit, -1 padded) -> the same batch as :class:`TripletCollate`,
    whose ``triplets`` are all those the CTL protocol allows among the batch's products
    (:func:`~ctl_lightning.losses.mining.outfit_triplets`): what ``loss.miner=none`` trains on."""

    def __call__(self, samples: list[np.ndarray]) -> dict[str, torch.Tensor]:
        groups = np.asarray(samples)
        rows = np.unique(groups[groups >= 0])
        triplets = outfit_triplets(torch.from_numpy(self.labels[rows]), torch.from_numpy(self.categories[rows]))
        return self._batch(rows, triplets)


class ProductCollate:
    """Row ids -> ``{row_ids [B], images [B, H, W, 3] uint8}`` (images left out when not needed)."""

    def __init__(self, store: ProductStore, load_images: bool = True):
        self.store = store
        self.load_images = load_images

    def __call__(self, samples: list[np.ndarray]) -> dict[str, torch.Tensor]:
        rows = np.asarray(samples, dtype=np.int64)
        batch = {"row_ids": torch.from_numpy(rows)}
        if self.load_images:
            batch["images"] = torch.from_numpy(self.store.read(rows))
        return batch


class EpochShuffle(RandomSampler):
    """A permutation that depends only on ``(seed, epoch)``.

    The default sampler draws from the global generator, so a run resumed at epoch k would see a
    different order than an uninterrupted one. Lightning calls ``set_epoch`` each epoch; under DDP it
    swaps this sampler for a ``DistributedSampler``, which is seeded the same way.
    """

    def __init__(self, data_source: Dataset, seed: int):
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()
