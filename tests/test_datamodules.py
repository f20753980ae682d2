"""DataModules: batches carry row ids, read pixels from the store, and do not depend on the worker count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_triplets import SIZE, TINY_SOURCE, tiny_source

from ctl_lightning.data.batches import EpochShuffle, RowsDataset
from ctl_lightning.data.datamodules import ProductsDataModule, TripletsDataModule
from ctl_lightning.data.sources import SyntheticStl
from ctl_lightning.errors import CtlError


def make(data_dir, num_workers: int = 0, **kwargs) -> TripletsDataModule:
    datamodule = TripletsDataModule(
        tiny_source(data_dir),
        image_size=SIZE,
        batch_size=16,
        eval_batch_size=64,
        num_workers=num_workers,
        triplets_per_outfit=2,
        seed=0,
        **kwargs,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


@pytest.fixture(scope="module")
def datamodule(data_dir) -> TripletsDataModule:
    return make(data_dir)


def epoch(loader, number: int = 0) -> list[dict]:
    if isinstance(loader.sampler, EpochShuffle):
        loader.sampler.set_epoch(number)
    return list(loader)


def assert_same_batches(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_triplet_batches_carry_row_ids_and_store_pixels(datamodule):
    store = datamodule.store
    batches = epoch(datamodule.train_dataloader())
    assert sum(len(b["triplets"]) for b in batches) == len(datamodule.train_triplets)
    order = list(EpochShuffle(RowsDataset(datamodule.train_triplets), seed=0))
    expected = datamodule.train_triplets[order]
    seen = []
    for batch in batches:
        assert set(batch) == {"row_ids", "labels", "categories", "triplets", "images"}
        rows, triplets = batch["row_ids"].numpy(), batch["triplets"].numpy()
        assert np.array_equal(store.table.categories[rows], np.unique(store.table.categories)[batch["categories"].numpy()])
        assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (len(rows), SIZE, SIZE, 3)
        assert np.array_equal(batch["images"].numpy(), np.asarray(store.images)[rows])
        assert len(np.unique(rows)) == len(rows)  # each product embedded once
        assert triplets.max() < len(rows)
        assert np.array_equal(batch["labels"].numpy(), datamodule.labels[rows])
        seen.append(rows[triplets])
    # row_ids[triplets] gives back the triplets, in the sampler's order.
    assert np.array_equal(np.concatenate(seen), expected)
    # Labels are training outfits (class ids); anchor and positive share one.
    labels = np.concatenate([b["labels"].numpy()[b["triplets"].numpy()] for b in batches])
    assert (labels[:, 0] == labels[:, 1]).all() and (labels[:, 0] != labels[:, 2]).all()
    assert (labels >= 0).all() and labels.max() < datamodule.num_classes


def test_dedup_false_gives_three_entries_per_triplet(data_dir, datamodule):
    plain = make(data_dir, dedup=False)
    deduped = next(iter(datamodule.train_dataloader()))
    batch = next(iter(plain.train_dataloader()))
    B = len(batch["triplets"])
    assert B == 16
    assert batch["row_ids"].shape == (3 * B,)
    assert torch.equal(batch["triplets"], torch.arange(3 * B).reshape(B, 3))
    assert torch.equal(batch["row_ids"].reshape(B, 3), deduped["row_ids"][deduped["triplets"]])
    assert torch.equal(batch["images"], deduped["images"][deduped["triplets"].reshape(-1)])
    assert len(deduped["row_ids"]) < 3 * B  # triplets of one batch share products


def test_worker_processes_give_the_same_batches(data_dir, datamodule):
    parallel = make(data_dir, num_workers=2)
    assert parallel.train_dataloader().num_workers == 2
    assert_same_batches(epoch(datamodule.train_dataloader(), 1), epoch(parallel.train_dataloader(), 1))
    assert_same_batches(epoch(datamodule.val_dataloader()), epoch(parallel.val_dataloader()))
    assert_same_batches(epoch(datamodule.predict_dataloader()), epoch(parallel.predict_dataloader()))


def test_val_and_test_loaders(datamodule):
    val = epoch(datamodule.val_dataloader())
    rows = np.concatenate([b["row_ids"].numpy()[b["triplets"].numpy()] for b in val])
    assert np.array_equal(rows, datamodule.val_triplets)  # unshuffled
    test = epoch(datamodule.test_dataloader())
    assert np.array_equal(np.concatenate([b["row_ids"].numpy() for b in test]), datamodule.evaluation.rows)


def test_predict_covers_every_product_once_in_order(datamodule):
    store = datamodule.store
    batches = epoch(datamodule.predict_dataloader())
    rows = np.concatenate([b["row_ids"].numpy() for b in batches])
    assert np.array_equal(rows, np.arange(len(store)))
    assert len(batches) == -(-len(store) // 64)
    images = np.concatenate([b["images"].numpy() for b in batches])
    assert np.array_equal(images, np.asarray(store.images))
    datamodule.load_images = False
    try:
        assert set(next(iter(datamodule.predict_dataloader()))) == {"row_ids"}
    finally:
        datamodule.load_images = True


def test_train_order_changes_with_the_epoch_only(datamodule):
    loader = datamodule.train_dataloader()
    first = [b["row_ids"] for b in epoch(loader, 0)]
    torch.manual_seed(1234)  # the global generator plays no part
    again = [b["row_ids"] for b in epoch(loader, 0)]
    later = [b["row_ids"] for b in epoch(loader, 1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, later))


def test_epoch_shuffle_depends_only_on_seed_and_epoch():
    dataset = RowsDataset(np.arange(50))

    def order(seed: int, epoch: int) -> list[int]:
        sampler = EpochShuffle(dataset, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    base = order(3, 0)
    assert sorted(base) == list(range(50)) and base != list(range(50))
    torch.manual_seed(99)
    assert order(3, 0) == base
    assert order(3, 1) != base and sorted(order(3, 1)) == list(range(50))
    assert order(4, 0) != base
    sampler = EpochShuffle(dataset, 3)
    sampler.set_epoch(2)
    list(sampler)
    assert list(sampler) == order(3, 2)  # iterating twice in one epoch repeats it
    assert len(sampler) == 50


def test_products_datamodule_over_synthetic_stl(data_dir):
    source = SyntheticStl(data_dir / "synthetic", **TINY_SOURCE)
    datamodule = ProductsDataModule(source, image_size=SIZE, eval_batch_size=32)
    datamodule.prepare_data()
    datamodule.setup("predict")
    store = datamodule.store
    assert store.path.name == f"stl-{SIZE}px"
    assert len(store) > 30 and set(store.table.splits) == {"catalog"}
    batches = list(datamodule.predict_dataloader())
    rows = np.concatenate([b["row_ids"].numpy() for b in batches])
    assert np.array_equal(rows, np.arange(len(store)))
    assert np.array_equal(np.concatenate([b["images"].numpy() for b in batches]), np.asarray(store.images))
    catalog = ProductsDataModule(source, split="catalog", image_size=SIZE)
    catalog.setup("predict")
    assert np.array_equal(catalog.predict_rows, np.arange(len(store)))
    empty = ProductsDataModule(source, split="test", image_size=SIZE)
    with pytest.raises(CtlError, match="no products in split 'test'"):
        empty.setup("predict")


def test_bad_settings_are_clear_errors(data_dir):
    with pytest.raises(CtlError, match="batch sizes must be positive"):
        TripletsDataModule(tiny_source(data_dir), batch_size=0)
    with pytest.raises(CtlError, match="triplets_per_outfit must be at least 1"):
        TripletsDataModule(tiny_source(data_dir), triplets_per_outfit=0)
    with pytest.raises(CtlError, match=r"data.image_size is null"):
        TripletsDataModule(tiny_source(data_dir), image_size=None).prepare_data()


def test_validation_and_test_products_never_train(datamodule):
    table, held = datamodule.store.table, datamodule.validation_outfits
    train_outfits = set(table.groups[table.rows_in_split("train")])
    assert held < train_outfits and len(held) == round(0.1 * len(train_outfits))
    is_val = np.isin(table.groups, list(held)) & (table.splits == "train")
    train, val = datamodule.train_triplets, datamodule.val_triplets
    # Training triplets: anchor, positive and negative all from the remaining training outfits ...
    assert (table.splits[train] == "train").all() and not is_val[train].any()
    assert set(table.groups[train[:, 0]]) == train_outfits - held  # ... each of which anchors some
    # ... and validation triplets only from the validation outfits.
    assert len(val) > 0 and is_val[val].all()


def test_softtriple_classes_are_the_training_outfits_only(datamodule):
    table, labels = datamodule.store.table, datamodule.labels
    trains = (table.splits == "train") & ~np.isin(table.groups, list(datamodule.validation_outfits))
    assert (labels[~trains] == -1).all()  # validation and test products have no class
    assert (labels[trains] >= 0).all()
    # One class per training outfit, numbered 0..num_classes-1.
    assert datamodule.num_classes == len(set(table.groups[trains])) == len(np.unique(labels[trains]))
    assert labels.max() == datamodule.num_classes - 1
    assert all(len(np.unique(labels[table.groups == g])) == 1 for g in set(table.groups[trains]))


def test_no_validation_share_validates_nothing(data_dir, datamodule):
    plain = make(data_dir, val_fraction=0.0)
    table = plain.store.table
    assert plain.validation_outfits == frozenset() and len(plain.val_triplets) == 0
    assert plain.num_classes == len(set(table.groups[table.rows_in_split("train")])) > datamodule.num_classes
