"""Triplets by the CTL protocol, held-out triplets and user triplet files (split by validation outfit)."""

from __future__ import annotations

import functools
import logging
import operator

import numpy as np
import pytest

from ctl_lightning.data.datamodules import TripletsDataModule
from ctl_lightning.data.formats.ctl import CtlItem
from ctl_lightning.data.products import ProductSpec, ProductTable
from ctl_lightning.data.sources import SyntheticCtl
from ctl_lightning.data.triplets import (
    OutfitIndex,
    sample_triplets,
    triplets_from_items,
)
from ctl_lightning.errors import CtlError

# The dataset of the TINY runs (helpers.py) (data_dir/synthetic, 150 outfits, 30 scenes, 32 px), shared with them.
TINY_SOURCE = dict(seed=0, outfits=150, styles=16, scenes=30)
SIZE = 32


def tiny_source(data_dir, **kwargs) -> SyntheticCtl:
    return SyntheticCtl(data_dir / "synthetic", **TINY_SOURCE, **kwargs)


@pytest.fixture(scope="module")
def store(data_dir):
    return tiny_source(data_dir).open_store(SIZE)


@pytest.fixture(scope="module")
def table(store):
    return store.table


def check_protocol(triplets: np.ndarray, table: ProductTable, split: str) -> None:
    a, p, n = triplets.T
    assert (table.splits[triplets] == split).all()
    assert (table.groups[a] == table.groups[p]).all()  # anchor and positive: one outfit
    assert (table.categories[a] != table.categories[p]).all()  # ... different categories
    assert (table.categories[n] == table.categories[p]).all()  # negative: the positive's category
    assert (table.groups[n] != table.groups[a]).all()  # ... from another outfit


def test_sampled_triplets_follow_the_ctl_protocol(table):
    index = OutfitIndex(table, "train")
    triplets = sample_triplets(index, 4, np.random.default_rng(0))
    assert triplets.dtype == np.int64 and triplets.shape == (4 * len(index.outfits), 3)
    check_protocol(triplets, table, "train")
    # Every training outfit anchors triplets, and many products and categories take part.
    assert set(table.groups[triplets[:, 0]]) == set(index.outfits)
    assert len(np.unique(triplets)) > 0.5 * len(table.rows_in_split("train"))
    assert len(set(table.categories[triplets[:, 1]])) == 13


def test_sampling_is_seeded(table):
    index = OutfitIndex(table, "train")
    first = sample_triplets(index, 2, np.random.default_rng(5))
    assert np.array_equal(first, sample_triplets(index, 2, np.random.default_rng(5)))
    other = sample_triplets(index, 2, np.random.default_rng(6))
    assert not np.array_equal(first, other)
    assert (first != other).any(axis=1).mean() > 0.5


def test_held_out_triplets_one_per_test_outfit(data_dir, table):
    datamodule = TripletsDataModule(tiny_source(data_dir), image_size=SIZE, triplets_per_outfit=4, val_fraction=0.1, seed=0)
    datamodule.setup("fit")
    held_out = datamodule.evaluation.triplets
    test_outfits = set(table.groups[table.rows_in_split("test")])
    check_protocol(held_out, table, "test")
    assert len(held_out) == len(test_outfits) == 30
    assert set(table.groups[held_out[:, 0]]) == test_outfits
    check_protocol(datamodule.train_triplets, table, "train")
    check_protocol(datamodule.val_triplets, table, "train")
    assert not set(table.groups[datamodule.train_triplets[:, 0]]) & set(table.groups[datamodule.val_triplets[:, 0]])
    # Seeded end to end: the same seed gives the same sets, another seed others.
    same = TripletsDataModule(tiny_source(data_dir), image_size=SIZE, triplets_per_outfit=4, val_fraction=0.1, seed=0)
    same.setup("fit")
    assert np.array_equal(same.train_triplets, datamodule.train_triplets)
    assert np.array_equal(same.evaluation.triplets, held_out)
    other = TripletsDataModule(tiny_source(data_dir), image_size=SIZE, triplets_per_outfit=4, val_fraction=0.1, seed=1)
    other.setup("fit")
    assert not np.array_equal(other.evaluation.triplets, held_out)
    assert not np.array_equal(other.train_triplets, datamodule.train_triplets)
    # The held-out sets do not depend on the training settings (their own random streams).
    settings = TripletsDataModule(tiny_source(data_dir), image_size=SIZE, triplets_per_outfit=1, val_fraction=0.0, seed=0)
    settings.setup("fit")
    for name in ("triplets", "outfits", "fake_outfits", "rows"):
        assert np.array_equal(getattr(settings.evaluation, name), getattr(datamodule.evaluation, name)), name


def spec(outfit: str, category: str, i: int, split: str = "train") -> ProductSpec:
    return ProductSpec(f"{outfit}@{i}", outfit, category, split, f"/nowhere/{outfit}.jpg", (0.1, 0.1, 0.2, 0.2))


def test_a_category_in_a_single_outfit_is_never_a_positive(caplog):
    specs = [
        spec("o1", "Shoes", 0),
        spec("o1", "Pants", 1),
        spec("o2", "Shoes", 2),
        spec("o2", "Pants", 3),
        spec("o3", "Shoes", 4),
        spec("o3", "Hats", 5),
    ]
    table = ProductTable(specs)
    with caplog.at_level(logging.INFO):
        triplets = sample_triplets(OutfitIndex(table, "train"), 20, np.random.default_rng(0))
    assert "categories ['Hats'] occur in a single outfit of split 'train'" in caplog.text
    check_protocol(triplets, table, "train")
    # No hat has a negative: hats only anchor (o3's shoe is the positive then).
    assert "Hats" not in set(table.categories[triplets[:, 1:]].ravel())
    assert "Hats" in set(table.categories[triplets[:, 0]]) and len(triplets) == 3 * 20
    # With a second hat elsewhere hats are positives too, with negatives only from the other outfit.
    table = ProductTable([*specs, spec("o1", "Hats", 6)])
    triplets = sample_triplets(OutfitIndex(table, "train"), 20, np.random.default_rng(0))
    check_protocol(triplets, table, "train")
    assert "Hats" in set(table.categories[triplets[:, 1]])
    with pytest.raises(CtlError, match="no products in split 'test'"):
        OutfitIndex(table, "test")


def test_outfits_of_one_category_give_no_triplets():
    table = ProductTable([spec("o1", "Shoes", 0), spec("o2", "Shoes", 1)])
    with pytest.raises(CtlError, match="no outfit of split 'train' has two categories"):
        sample_triplets(OutfitIndex(table, "train"), 1, np.random.default_rng(0))


def item_of(table: ProductTable, row: int) -> list[str]:
    s = table.spec(row)
    return [s.group, *(f"{v:.7f}" for v in s.box), s.category]


def test_user_triplet_file_maps_to_row_ids_and_splits_by_validation_outfit(data_dir, table, tmp_path, caplog):
    source = tiny_source(data_dir)
    held = TripletsDataModule(source, image_size=SIZE, val_fraction=0.25, seed=0).validation_outfits
    pool = sample_triplets(OutfitIndex(table, "train"), 1, np.random.default_rng(3))
    in_val = np.isin(table.groups[pool], list(held))
    validating = pool[in_val[:, 0]][:4]  # anchor (and positive) from a validation outfit
    training = pool[~in_val.any(axis=1)][:4]  # no validation product at all
    mixed = pool[~in_val[:, 0] & in_val[:, 2]][:3]  # training anchor, validation negative
    wanted = np.concatenate([validating, training, mixed])
    assert len(wanted) == 11
    lines = ["\t".join(functools.reduce(operator.iadd, (item_of(table, r) for r in triplet), [])) for triplet in wanted]
    unknown = ["nosuchoutfit", "0.1", "0.1", "0.2", "0.2", "Shoes"]
    lines.insert(3, "\t".join(item_of(table, wanted[0][0]) + item_of(table, wanted[0][1]) + unknown))
    lines.append("\t".join(unknown + item_of(table, wanted[1][1]) + item_of(table, wanted[1][2])))
    path = tmp_path / "triplets.tsv"
    path.write_text("\n".join(lines) + "\n")
    source = tiny_source(data_dir, triplets_file=str(path))
    with caplog.at_level(logging.WARNING):
        supplied = source.triplets()
        rows = triplets_from_items(table, supplied.records, str(path))
    assert np.array_equal(rows, wanted)
    assert f"{path}: skipped 2 of 13 triplets whose products are not in the store" in caplog.text
    # The datamodule validates on those anchored in validation outfits, trains on those without any
    # validation product, and drops (and counts) the ones that mix both.
    datamodule = TripletsDataModule(source, image_size=SIZE, val_fraction=0.25, seed=0)
    with caplog.at_level(logging.WARNING):
        datamodule.setup("fit")
    assert datamodule.validation_outfits == held
    assert np.array_equal(datamodule.val_triplets, validating)
    assert np.array_equal(datamodule.train_triplets, training)
    assert f"{path}: 3 triplets mix training and validation outfits" in caplog.text


def test_user_triplets_naming_no_known_product_are_an_error(table):
    items = [CtlItem("nosuch", 0.1, 0.1, 0.2, 0.2, "Shoes")] * 3
    with pytest.raises(CtlError) as caught:
        triplets_from_items(table, [items, items], "user.tsv")
    assert str(caught.value) == "user.tsv: none of its 2 triplets names products of the store"
