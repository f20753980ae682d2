"""Outfit-grouped batches (``data.batching=outfits``): a few items of each of a few training outfits,
seeded, resumable, and never a validation or test product; a tiny run trains on them with a miner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY, compose_config
from test_datamodules import assert_same_batches, epoch, make
from test_miners import assert_protocol
from test_training import _train

from ctl_lightning.benchmarks import fastpaths
from ctl_lightning.data.datamodules import random_stream
from ctl_lightning.data.triplets import OutfitIndex, outfit_groups
from ctl_lightning.errors import CtlError
from ctl_lightning.pipeline import train

PER_BATCH, PER_OUTFIT = 6, 3


@pytest.fixture(scope="module")
def grouped(data_dir):
    return make(data_dir, batching="outfits", outfits_per_batch=PER_BATCH, items_per_outfit=PER_OUTFIT)


def test_groups_hold_each_training_product_once_and_nothing_else(grouped):
    table, groups = grouped.store.table, grouped.train_groups
    assert groups.shape[1] == PER_OUTFIT
    rows = groups[groups >= 0]
    training = np.flatnonzero(grouped.labels >= 0)  # training outfits: not validation, not test
    assert np.array_equal(np.sort(rows), training)
    assert all(len(set(table.groups[g[g >= 0]])) == 1 for g in groups)  # one outfit per group
    assert ((groups >= 0).sum(axis=1) >= 2).all()  # every outfit here has 2+ items: no group of one


def test_batches_are_outfit_groups_with_protocol_triplets(grouped):
    batches = epoch(grouped.train_dataloader())
    assert len(batches) == -(-len(grouped.train_groups) // PER_BATCH)
    for batch in batches:
        labels, categories = batch["labels"], batch["categories"]
        assert (labels >= 0).all() and len(torch.unique(labels)) <= PER_BATCH
        assert len(batch["row_ids"]) <= PER_BATCH * PER_OUTFIT
        assert torch.equal(labels, torch.from_numpy(grouped.labels[batch["row_ids"].numpy()]))
        assert_protocol(batch["triplets"], labels, categories)
        assert batch["images"].shape[0] == len(batch["row_ids"])
    assert sum(len(b["row_ids"]) for b in batches) == int((grouped.train_groups >= 0).sum())


def test_grouped_batches_depend_on_seed_and_epoch_only(data_dir, grouped):
    loader = grouped.train_dataloader()
    first = epoch(loader, 0)
    torch.manual_seed(1234)  # the global generator plays no part
    assert_same_batches(first, epoch(loader, 0))
    rebuilt = make(data_dir, batching="outfits", outfits_per_batch=PER_BATCH, items_per_outfit=PER_OUTFIT)
    assert_same_batches(first, epoch(rebuilt.train_dataloader(), 0))  # what a resumed run rebuilds
    later = epoch(loader, 1)
    assert not all(torch.equal(a["row_ids"], b["row_ids"]) for a, b in zip(first, later))
    index = OutfitIndex(grouped.store.table, "train", grouped._class_of_outfit())
    assert np.array_equal(outfit_groups(index, PER_OUTFIT, random_stream(0, "outfit_groups")), grouped.train_groups)
    assert not np.array_equal(outfit_groups(index, PER_OUTFIT, random_stream(1, "outfit_groups")), grouped.train_groups)


def test_grouping_leaves_the_sampled_triplets_and_held_out_sets_alone(data_dir, grouped):
    plain = make(data_dir)
    assert np.array_equal(plain.train_triplets, grouped.train_triplets)
    assert np.array_equal(plain.val_triplets, grouped.val_triplets)
    assert np.array_equal(plain.evaluation.triplets, grouped.evaluation.triplets)


def test_bad_grouping_settings_are_clear_errors(data_dir):
    with pytest.raises(CtlError, match=r"data.batching must be one of triplets, outfits"):
        make(data_dir, batching="pairs")
    with pytest.raises(CtlError, match="outfits_per_batch >= 2 and items_per_outfit >= 2"):
        make(data_dir, batching="outfits", items_per_outfit=1)


@pytest.mark.slow
def test_tiny_run_on_outfit_batches_with_a_semihard_miner(data_dir, tmp_path):
    overrides = [*TINY, "data=toy", "data.batching=outfits", "loss.miner=semihard", "seed=3"]
    metrics = train(compose_config("train", tmp_path, data_dir, overrides))
    for key in ("test/triplet_accuracy", "test/fitb_accuracy", "test/compatibility_auc", "val/triplet_accuracy"):
        assert metrics[key] is not None and 0 <= metrics[key] <= 1, key
    logged = (tmp_path / "csv").rglob("metrics.csv")
    header = next(iter(logged)).read_text().splitlines()[0]
    assert "train/mined_triplets" in header


@pytest.mark.slow
def test_resumed_grouped_run_ends_like_an_uninterrupted_one(data_dir, tmp_path):
    grouped = ["data.batching=outfits", "loss.miner=batch_hard"]
    straight = _train(tmp_path / "straight", data_dir, "trainer.max_epochs=2", *grouped)
    _train(tmp_path / "stopped", data_dir, "trainer.max_epochs=1", *grouped)
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    resumed = _train(tmp_path / "stopped", data_dir, "trainer.max_epochs=2", f"ckpt_path={last}", *grouped)
    for key in ("test/triplet_accuracy", "test/compatibility_auc", "val/triplet_accuracy"):
        assert resumed[key] == pytest.approx(straight[key], abs=1e-7), key


def test_grouped_batch_accounting_counts_each_training_product_once_an_epoch(data_dir, grouped):
    counts = fastpaths.grouped(make(data_dir, batching="outfits", outfits_per_batch=PER_BATCH, items_per_outfit=PER_OUTFIT))
    every, hardest = counts["all_in_batch"], counts["batch_hard"]
    assert every["images_with_dedup"] == hardest["images_with_dedup"] == int((grouped.labels >= 0).sum())
    assert every["triplets"] == sum(len(b["triplets"]) for b in grouped.train_dataloader())
    assert 0 < hardest["triplets"] < every["triplets"] and every["saved_fraction"] > hardest["saved_fraction"] > 0
