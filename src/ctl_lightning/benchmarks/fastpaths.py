"""The frozen-backbone feature cache, the per-batch deduplication of triplet members, and the
forward passes that outfit-grouped batches share."""

from __future__ import annotations

import tempfile
import time

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_metric_learning.distances import LpDistance

from ctl_lightning.benchmarks import bounds, setup
from ctl_lightning.benchmarks.gpu_report import STEPS_PER_CALL
from ctl_lightning.benchmarks.loading import _StepTimer
from ctl_lightning.data.products import ProductTable
from ctl_lightning.data.triplets import OutfitIndex, sample_triplets
from ctl_lightning.losses.mining import OutfitMiner


def _epoch_seconds(model, dm, steps: int | None, skip: int = 2, cache_dir: str | None = None) -> tuple[float, int]:
    """Seconds for ``steps`` trainer calls (after ``skip`` warm-up calls) and the calls of a full epoch;
    ``cache_dir``: the feature cache's folder on disk, so that repeated fits compute it once."""
    timer = _StepTimer(skip)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=(steps + skip) if steps else 1.0,
        limit_val_batches=0,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[*setup.fit_callbacks(dm, cache_dir), timer],
    )
    trainer.fit(model, datamodule=dm)
    return timer.times[0], len(dm.train_dataloader())


def feature_cache(dm_factory, model_factory, uncached_steps: int, repeats: int) -> dict:
    """Epochs after the first, with the cache (head only) against recomputing the frozen backbone.

    The cached epoch is timed whole; the uncached one from ``uncached_steps`` steps, scaled to the
    epoch's step count (every step embeds a batch's unique products, so steps cost alike). The cached
    epoch is timed again with the fixed-shape step, ``STEPS_PER_CALL`` steps a trainer call (the same
    batches; tests/test_member_steps.py), its first call left out and the rest scaled to the epoch.
    """
    cached_runs, uncached_runs, stepped_runs = [], [], []
    build_s = None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache_dir:  # the cached fit saves its cache, the stepped fit loads it
            dm = dm_factory()
            model = model_factory(feature_cache=True)
            start = time.perf_counter()
            seconds, epoch_steps = _epoch_seconds(model, dm, None, cache_dir=cache_dir)
            build_s = time.perf_counter() - start - seconds
            cached_runs.append(seconds * epoch_steps / (epoch_steps - 2))
            dm = dm_factory(steps_per_call=STEPS_PER_CALL)
            seconds, calls = _epoch_seconds(model_factory(feature_cache=True, steps_per_call=STEPS_PER_CALL), dm, None, 1, cache_dir)
            stepped_runs.append(seconds * calls / (calls - 1))
        dm = dm_factory()
        seconds, _ = _epoch_seconds(model_factory(feature_cache=False), dm, uncached_steps)
        uncached_runs.append(seconds * epoch_steps / uncached_steps)
    cached, uncached = float(np.median(cached_runs)), float(np.median(uncached_runs))
    # The same head steps over the same triplets in a plain loop (no Lightning): the floor of the cached epoch.
    features = torch.randn(len(dm.store), model.backbone.num_features)
    loop_runs = [bounds.eager_epoch(features, np.asarray(dm.train_triplets), dm.batch_size)["epoch_s"] for _ in range(repeats)]
    return {
        "plain_loop_epoch_s": float(np.median(loop_runs)),
        "plain_loop_runs_s": loop_runs,
        "epoch_steps": epoch_steps,
        "cached_epoch_s": cached,
        "steps_per_call": STEPS_PER_CALL,
        "stepped_epoch_s": float(np.median(stepped_runs)),
        "stepped_runs_s": stepped_runs,
        "uncached_epoch_s": uncached,
        "speedup": uncached / cached,
        "cached_runs_s": cached_runs,
        "uncached_runs_s": uncached_runs,
        "uncached_measured_steps": uncached_steps,
        "first_epoch_extra_s (cache build, fit start)": build_s,  # includes writing the cache to disk
    }


def _forward_passes(triplets: np.ndarray, batch_size: int, seed: int = 0) -> dict:
    order = np.random.default_rng(seed).permutation(len(triplets))
    unique = total = 0
    for start in range(0, len(order), batch_size):
        batch = triplets[order[start : start + batch_size]]
        unique += len(np.unique(batch))
        total += batch.size
    return {
        "triplets": len(triplets),
        "images_without_dedup": int(total),
        "images_with_dedup": int(unique),
        "saved_fraction": 1 - unique / total,
    }


def dedup(dm, real_table: ProductTable | None, batch_size: int) -> dict:
    """Share of forward passes saved by embedding each distinct product of a batch once."""
    out = {"synthetic_default": _forward_passes(np.concatenate([dm.train_triplets, dm.val_triplets]), batch_size)}
    if real_table is not None:
        triplets = sample_triplets(OutfitIndex(real_table, "train"), 1, np.random.default_rng(0))
        out["ctl_raw_test_annotations"] = _forward_passes(triplets, batch_size)
    return out


def _shared(triplets: int, unique: int) -> dict:
    return {
        "triplets": triplets,
        "images_without_dedup": 3 * triplets,
        "images_with_dedup": unique,
        "saved_fraction": 1 - unique / (3 * triplets),
    }


def grouped(dm) -> dict:
    """Outfit-grouped batches (``data.batching=outfits``): the distinct products one epoch embeds
    against 3 per triplet it trains on, with every in-batch triplet (``loss.miner=none``) and with
    ``batch_hard``'s one per anchor and positive category (a count that does not depend on the
    embeddings, so random ones serve). Counts, not timings: any machine gives the same."""
    dm.load_images = False
    miner = OutfitMiner("batch_hard", 0.2, LpDistance(normalize_embeddings=True, p=2, power=2))
    generator = torch.Generator().manual_seed(0)
    unique = every = hardest = batches = 0
    for batch in dm.train_dataloader():
        unique += len(batch["row_ids"])
        every += len(batch["triplets"])
        hardest += len(miner(torch.randn(len(batch["row_ids"]), 8, generator=generator), batch["labels"], batch["categories"]))
        batches += 1
    shape = {"batches": batches, "outfits_per_batch": dm.outfits_per_batch, "items_per_outfit": dm.items_per_outfit}
    return {"all_in_batch": {**shape, **_shared(every, unique)}, "batch_hard": {**shape, **_shared(hardest, unique)}}
