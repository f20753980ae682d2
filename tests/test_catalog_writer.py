"""CatalogWriter's two paths: one process streams its batches into the catalogs, several ranks write
shards that rank 0 merges. Both must check the same things and publish the same bytes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ctl_lightning.data.products import ProductSpec, ProductTable
from ctl_lightning.data.store import ProductStore
from ctl_lightning.errors import CtlError
from ctl_lightning.retrieval.catalog import KINDS, Catalog, nonfinite_rows
from ctl_lightning.retrieval.merge import scatter_rows
from ctl_lightning.retrieval.writer import CatalogWriter

PRODUCTS = 100
DIMS = {"similar": 12, "compatible": 4}
BATCH = 16


class Subspaces:
    """A type-aware model's subspaces, as ``pair_subspaces`` gives them."""

    pairs = (("c0", "c1"), ("c1", "c2"))
    kind = "projection"

    def matrices(self) -> torch.Tensor:
        return torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4) / 7


class TableModel(pl.LightningModule):
    """Predicts fixed embeddings looked up by row id (exact, whatever the batch), some of them all-zero;
    ``fail``: {batch index: what that batch does wrong}."""

    def __init__(self, subspaces: bool = False, fail: dict[int, str] | None = None):
        super().__init__()
        rng = np.random.default_rng(0)
        for kind, dim in DIMS.items():
            values = rng.normal(size=(PRODUCTS, dim)).astype(np.float32)
            values /= np.linalg.norm(values, axis=1, keepdims=True)
            values[[3, 40]] = 0.0  # blank crops: counted in the manifest
            self.register_buffer(kind, torch.from_numpy(values))  # on the model's device, in its state fingerprint
        self.subspaces = Subspaces() if subspaces else None
        self.fail = fail or {}

    @property
    def vectors(self) -> dict[str, torch.Tensor]:
        return {kind: getattr(self, kind) for kind in DIMS}

    def pair_subspaces(self):
        return self.subspaces

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        ids = batch
        failure = self.fail.get(batch_idx)
        if failure == "raise":
            raise RuntimeError("the model broke mid-predict")
        if failure == "shuffle":
            ids = ids.flip(0)
        if failure == "repeat":  # the previous batch's products again
            ids = torch.from_numpy(ROWS[(batch_idx - 1) * BATCH : batch_idx * BATCH])
        out = {kind: values[ids].clone() for kind, values in self.vectors.items()}
        if failure == "nan":
            out["compatible"][[1, 2]] = float("nan")
        return {"row_ids": ids, **out}


def datamodule(root: Path, rows: np.ndarray) -> SimpleNamespace:
    table = ProductTable([ProductSpec(f"p{i}", f"o{i // 4}", f"c{i % 3}", "train", f"img{i}.jpg", None) for i in range(PRODUCTS)])
    store = SimpleNamespace(table=table, path=root / "store", fingerprint="s" * 20, size=32)
    return SimpleNamespace(store=store, predict_rows=rows, source=SimpleNamespace(root=root / "data"))


# Products 7, 50 and 51 are not in the catalog (e.g. a product's second listing): rows are not positions.
ROWS = np.setdiff1d(np.arange(PRODUCTS), [7, 50, 51])


def predict(
    run: Path, model: TableModel, shards: bool = False, rows: np.ndarray = ROWS, given: np.ndarray | None = None, accelerator: str = "cpu"
) -> CatalogWriter:
    """``trainer.predict`` on one process over ``given`` (default: the catalog's ``rows``), in batches."""
    writer = CatalogWriter(run / "catalogs", datamodule(run, rows), run_dir=run, shards=shards)
    trainer = pl.Trainer(callbacks=[writer], logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator=accelerator)
    loader = DataLoader(torch.from_numpy(rows if given is None else given), batch_size=BATCH)
    trainer.predict(model, dataloaders=loader, return_predictions=False)
    return writer


def predict_on_ranks(run: Path, model: TableModel, world_size: int) -> CatalogWriter:
    """The writer's hooks as ``world_size`` ranks call them (DistributedSampler's interleaved shares), rank 0 last."""
    writer = CatalogWriter(run / "catalogs", datamodule(run, ROWS), run_dir=run)
    for rank in reversed(range(world_size)):
        trainer = SimpleNamespace(global_rank=rank, world_size=world_size, is_global_zero=rank == 0, ckpt_path=None)
        trainer.strategy = SimpleNamespace(barrier=lambda name: None)
        writer.on_predict_start(trainer, model)
        mine = torch.from_numpy(ROWS[rank::world_size])
        for i, start in enumerate(range(0, len(mine), BATCH)):
            prediction = model.predict_step(mine[start : start + BATCH], i)
            writer.write_on_batch_end(trainer, model, prediction, None, None, i, 0)
        writer.on_predict_epoch_end(trainer, model)
    return writer


def catalog_bytes(catalogs: Path) -> dict[str, bytes | dict]:
    """Every file of both catalogs; the manifests parsed, less their creation time."""
    found = {}
    for path in sorted(p for p in catalogs.rglob("*") if p.is_file()):
        name = str(path.relative_to(catalogs))
        found[name] = path.read_bytes()
        if path.name == "manifest.json":
            found[name] = {k: v for k, v in json.loads(found[name]).items() if k != "created"}
    return found


def no_leftovers(catalogs: Path) -> bool:
    return not [p.name for p in catalogs.glob(".*") if re.search(r"\.(tmp|old)-\d+$", p.name) or p.name == ".shards"]


@pytest.mark.parametrize("subspaces", [False, True], ids=["single space", "type-aware"])
def test_streamed_catalogs_are_byte_identical_to_merged_ones(tmp_path, subspaces):
    model = TableModel(subspaces)
    streamed = predict(tmp_path / "stream", model)
    assert not (tmp_path / "stream" / "catalogs" / ".shards").exists()  # no shard was written to merge
    predict(tmp_path / "merge", model, shards=True)
    predict_on_ranks(tmp_path / "ranks", model, world_size=3)

    expected = catalog_bytes(tmp_path / "merge" / "catalogs")
    files = {f"{kind}/{name}" for kind in KINDS for name in ["embeddings.npy", "manifest.json", "products.tsv", "row_ids.npy"]}
    assert set(expected) == files | ({"compatible/subspaces.npy"} if subspaces else set())
    assert catalog_bytes(tmp_path / "stream" / "catalogs") == expected
    assert catalog_bytes(tmp_path / "ranks" / "catalogs") == expected
    for kind in KINDS:
        catalog = Catalog.load(tmp_path / "stream" / "catalogs" / kind)
        assert np.array_equal(catalog.row_ids, ROWS) and catalog.manifest["zero_vectors"] == 2
        assert np.array_equal(catalog.embeddings, model.vectors[kind].cpu().numpy()[ROWS])
        assert streamed.written[kind] == tmp_path / "stream" / "catalogs" / kind
    assert streamed.merge_seconds > 0
    for run in ("stream", "merge", "ranks"):
        assert no_leftovers(tmp_path / run / "catalogs")


@pytest.mark.parametrize("shards", [False, True], ids=["stream", "merge"])
@pytest.mark.parametrize(
    "fail, error",
    [
        (
            {2: "nan"},
            rf"compatible: the model gave non-finite embeddings \(NaN or inf\) for store rows \[{ROWS[33]}, {ROWS[34]}\]; catalog not",
        ),
        ({3: "shuffle"}, r"similar: the row ids of a rank's predict are not increasing; predict must not shuffle"),
        ({3: "repeat"}, r"similar: the row ids of a rank's predict are not increasing; predict must not shuffle"),
        ({2: "raise"}, r"the model broke mid-predict"),
    ],
    ids=["nan", "shuffled", "repeated", "model error"],
)
def test_a_failed_predict_leaves_no_catalog_and_nothing_that_blocks_the_next(tmp_path, shards, fail, error):
    run = tmp_path / "run"
    with pytest.raises((CtlError, RuntimeError), match=error):
        predict(run, TableModel(fail=fail), shards=shards)
    # The merge publishes each catalog once its own checks pass (the similar one of a NaN compatible
    # embedding too); the stream checks every batch of both before it publishes either.
    failed = ["compatible"] if shards and "nan" in fail.values() else KINDS
    assert not any((run / "catalogs" / kind).exists() for kind in failed)
    if not shards:  # the merge keeps a failed merge's shards for a look; the stream leaves nothing
        assert no_leftovers(run / "catalogs")
    predict(run, TableModel(), shards=shards)
    assert len(Catalog.load(run / "catalogs" / "similar")) == len(ROWS) and no_leftovers(run / "catalogs")


def test_catalogs_of_the_whole_store_copy_its_products_table_instead_of_writing_one(tmp_path, monkeypatch):
    """Formatting products.tsv is Python-bound (3 to 5 us a row); a catalog of every product of the
    store lists what the store's own products.tsv lists, and copies it, on every path."""
    every = np.arange(PRODUCTS)
    for run in ("stream", "merge", "ranks"):
        store_table = tmp_path / run / "store" / "products.tsv"
        store_table.parent.mkdir(parents=True)
        datamodule(tmp_path / run, every).store.table.write_tsv(store_table)
    monkeypatch.setattr(ProductTable, "write_tsv", lambda *args: pytest.fail("products.tsv was formatted again"))
    model = TableModel()
    predict(tmp_path / "stream", model, rows=every)
    predict(tmp_path / "merge", model, shards=True, rows=every)
    writer = CatalogWriter(tmp_path / "ranks" / "catalogs", datamodule(tmp_path / "ranks", every), run_dir=tmp_path / "ranks")
    for rank in (1, 0):  # two ranks, rank 0 last, as predict_on_ranks deals them
        trainer = SimpleNamespace(global_rank=rank, world_size=2, is_global_zero=rank == 0, ckpt_path=None)
        trainer.strategy = SimpleNamespace(barrier=lambda name: None)
        writer.on_predict_start(trainer, model)
        writer.write_on_batch_end(trainer, model, model.predict_step(torch.from_numpy(every[rank::2]), 0), None, None, 0, 0)
        writer.on_predict_epoch_end(trainer, model)
    for run in ("stream", "merge", "ranks"):
        for kind in KINDS:
            catalog = tmp_path / run / "catalogs" / kind
            assert (catalog / "products.tsv").read_bytes() == (tmp_path / run / "store" / "products.tsv").read_bytes()
            assert list(Catalog.load(catalog).table.keys) == [f"p{i}" for i in every]


@pytest.mark.parametrize("shards", [False, True], ids=["stream", "merge"])
def test_a_catalog_of_some_products_writes_its_own_table_beside_a_store_table(tmp_path, shards):
    store_table = tmp_path / "store" / "products.tsv"
    store_table.parent.mkdir(parents=True)
    datamodule(tmp_path, ROWS).store.table.write_tsv(store_table)
    predict(tmp_path, TableModel(), shards=shards)
    for kind in KINDS:
        catalog = Catalog.load(tmp_path / "catalogs" / kind)
        assert list(catalog.table.keys) == [f"p{i}" for i in ROWS] and len(ROWS) < PRODUCTS


def test_a_stores_products_table_is_what_write_tsv_gives_for_all_its_rows(tiny_run, tmp_path):
    """What makes the copy above exact: the table a store reads back writes the same bytes again."""
    similar = Catalog.load(tiny_run / "catalogs" / "similar")
    store = ProductStore.open(similar.resolve(similar.manifest["data"]["store"]))
    store.table.write_tsv(tmp_path / "again.tsv", np.arange(len(store)))
    assert (tmp_path / "again.tsv").read_bytes() == (store.path / "products.tsv").read_bytes()
    assert (tiny_run / "catalogs" / "compatible" / "products.tsv").read_bytes() == (store.path / "products.tsv").read_bytes()


@pytest.mark.parametrize("shards", [False, True], ids=["stream", "merge"])
def test_every_expected_product_must_come_exactly_once(tmp_path, shards):
    with pytest.raises(CtlError, match=r"similar: 2 products missing and 0 embedded more than once"):
        predict(tmp_path / "missing", TableModel(), shards, given=np.setdiff1d(ROWS, [20, 90]))
    with pytest.raises(CtlError, match=r"similar: row ids \[7\] are not products of this catalog"):
        predict(tmp_path / "unknown", TableModel(), shards, given=np.union1d(ROWS, [7]))
    for run in ("missing", "unknown"):
        assert not (tmp_path / run / "catalogs" / "similar").exists() and not (tmp_path / run / "catalogs" / "compatible").exists()


def test_batches_are_written_one_batch_late_and_the_last_at_predict_end(tmp_path):
    """The deferral that lets a CUDA device compute the next batch while the host writes this one
    runs on the CPU too: a batch is written when the next one ends."""
    model = TableModel()
    writer = CatalogWriter(tmp_path / "catalogs", datamodule(tmp_path, ROWS), run_dir=tmp_path)
    trainer = SimpleNamespace(global_rank=0, world_size=1, is_global_zero=True, ckpt_path=None)
    writer.on_predict_start(trainer, model)
    batches = [torch.from_numpy(ROWS[i : i + BATCH]) for i in range(0, len(ROWS), BATCH)]
    for i, ids in enumerate(batches):
        writer.write_on_batch_end(trainer, model, model.predict_step(ids, i), None, None, i, 0)
        assert len(writer._pending) == 1 and (writer._builds["similar"].count if writer._builds else 0) == BATCH * i
    writer.on_predict_epoch_end(trainer, model)
    assert not writer._pending and writer._builds["similar"].count == len(ROWS)
    assert np.array_equal(Catalog.load(tmp_path / "catalogs" / "similar").embeddings, model.vectors["similar"].cpu().numpy()[ROWS])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predictions_on_a_cuda_device_are_copied_without_blocking_and_give_the_same_catalogs(tmp_path):
    model = TableModel(subspaces=True)
    predict(tmp_path / "cpu", model)
    predict(tmp_path / "cuda", model, accelerator="gpu")
    assert catalog_bytes(tmp_path / "cuda" / "catalogs") == catalog_bytes(tmp_path / "cpu" / "catalogs")

    model = model.cuda()
    writer = CatalogWriter(tmp_path / "hooks" / "catalogs", datamodule(tmp_path / "hooks", ROWS), run_dir=tmp_path / "hooks")
    trainer = SimpleNamespace(global_rank=0, world_size=1, is_global_zero=True, ckpt_path=None)
    writer.on_predict_start(trainer, model)
    for i, start in enumerate(range(0, len(ROWS), BATCH)):
        writer.write_on_batch_end(
            trainer, model, model.predict_step(torch.from_numpy(ROWS[start : start + BATCH]).cuda(), i), None, None, i, 0
        )
        (pending,) = writer._pending
        assert pending.ready is not None and all(t.is_pinned() for t in pending.tensors.values())
    writer.on_predict_epoch_end(trainer, model)
    assert catalog_bytes(tmp_path / "hooks" / "catalogs") == catalog_bytes(tmp_path / "cpu" / "catalogs")


def test_nonfinite_rows_are_found_exactly_even_where_the_squares_overflow():
    vectors = np.ones((6, 8), dtype=np.float32)
    vectors[1, 3], vectors[3, 0], vectors[4, 7] = np.nan, -np.inf, np.inf
    vectors[2] = 3e30  # finite, but its squares overflow float32: a suspect the exact check clears
    assert nonfinite_rows(vectors).tolist() == [1, 3, 4]
    assert nonfinite_rows(vectors, offset=10).tolist() == [11, 13, 14]
    assert nonfinite_rows(vectors.reshape(6, 2, 4)).tolist() == [1, 3, 4]  # subspace matrices: one row each


@pytest.mark.parametrize("positions", [[1, 4, 7, 10], [0, 1, 2], [2, 3, 7], [5]], ids=["dealt every 3", "contiguous", "uneven", "one row"])
def test_scatter_rows_places_rows_as_fancy_indexing_does(positions):
    positions = np.array(positions)
    rows = np.arange(len(positions) * 3, dtype=np.float32).reshape(-1, 3) + 1
    expected, target = np.zeros((12, 3), np.float32), np.zeros((12, 3), np.float32)
    expected[positions] = rows
    scatter_rows(target, positions, rows)
    assert np.array_equal(target, expected)
