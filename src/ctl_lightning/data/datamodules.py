"""LightningDataModules: triplets for training, products for catalogs.

``prepare_data`` (once per node) generates the synthetic dataset when needed and builds the product
store; ``setup`` (every process) opens the store and samples the seeded triplets. Batches carry row
ids, so embeddings can always be joined back to the store's metadata.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ctl_lightning.data.batches import (
    EpochShuffle,
    OutfitCollate,
    ProductCollate,
    RowsDataset,
    StepRows,
    TripletCollate,
    category_codes,
    triplet_rows,
)
from ctl_lightning.data.device_store import ResidentPixels, check_setting, deduplicate
from ctl_lightning.data.products import ProductTable
from ctl_lightning.data.sources import CtlSource
from ctl_lightning.data.store import ProductStore
from ctl_lightning.data.triplets import (
    FitbSet,
    OutfitIndex,
    compatibility_sets,
    fitb_rows,
    labelled_outfits,
    outfit_groups,
    sample_triplets,
    split_supplied,
    triplets_from_items,
)
from ctl_lightning.errors import CtlError

log = logging.getLogger(__name__)

# One random stream per purpose: the held-out sets stay the same whatever the training settings
# (triplets per outfit, validation share), so runs and sweeps are comparable. New streams go last.
STREAMS = ("train", "val", "heldout", "compat", "val_triplets", "outfit_groups")
BATCHINGS = ("triplets", "outfits")
# Where a batch carries store rows: predict and outfit batches, and triplet batches on the device-store path.
ROW_KEYS = ("row_ids", "triplet_rows")


@dataclass
class EvaluationSets:
    """Everything the test metrics need, as row ids of the test split."""

    table: ProductTable
    rows: np.ndarray  # the products the test loop embeds
    queries: np.ndarray  # test products: the queries of similar-product agreement
    triplets: np.ndarray  # held-out triplets, one per test outfit
    fitb: FitbSet | None
    outfits: np.ndarray  # real outfits, padded with -1
    fake_outfits: np.ndarray  # same categories, random items; or a compatibility file's label-0 outfits
    pair_measure: str = "cosine"  # how FITB and AUC score an item pair (evaluation.metrics.PAIR_SCORES)


def random_stream(seed: int, name: str) -> np.random.Generator:
    """The seeded random stream of one purpose (see :data:`STREAMS`)."""
    return np.random.default_rng([seed, STREAMS.index(name)])


def held_out_sets(table: ProductTable, source: CtlSource, seed: int) -> EvaluationSets:
    """The test protocols over ``table``'s test split, drawn from their own streams.

    A function of the table, the source's question files and the seed alone, so that the ceilings of
    :mod:`ctl_lightning.evaluation.ceilings` are scored on exactly the sets a trained model is. A
    dataset with its own compatibility file (Polyvore) is scored on it; otherwise each real test outfit
    gets a fake one drawn here.
    """
    test = OutfitIndex(table, "test")
    labelled = source.compatibility()
    if labelled is None:
        outfits, fakes = compatibility_sets(test, random_stream(seed, "compat"))
    else:
        outfits, fakes = labelled_outfits(table, labelled, f"{source.root}/{source.compatibility_file}")
    test_rows = table.rows_in_split("test")
    return EvaluationSets(
        table=table,
        # Similar products are searched in the whole catalog, as users would; without planted
        # styles (real data) that metric is undefined, and the test products suffice.
        rows=table.positions if (table.styles != "").any() else test_rows,
        queries=test_rows,
        triplets=sample_triplets(test, 1, random_stream(seed, "heldout")),
        fitb=fitb_rows(table, source.fitb(), f"{source.root}/{source.fitb_file}"),
        outfits=outfits,
        fake_outfits=fakes,
        pair_measure=source.pair_measure,
    )


class _StoreDataModule(pl.LightningDataModule):
    """Shared by both DataModules: store resolution, loader construction and the device store.

    With the store's pixels on the device (``device_store``, :mod:`ctl_lightning.data.device_store`)
    batches leave the loader as row ids only, from the main process (workers would only add a hop),
    and :meth:`on_after_batch_transfer` deduplicates them and gathers their pixels on the device.
    """

    def __init__(
        self,
        source: CtlSource,
        image_size: int | None,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        seed: int,
        pin_memory: bool = False,
        device_store: str | bool = "auto",
        device_store_share: float = 0.5,
    ):
        super().__init__()
        check_setting(device_store, device_store_share)
        if batch_size < 1 or eval_batch_size < 1:
            raise CtlError(f"batch sizes must be positive, got batch_size={batch_size}, eval_batch_size={eval_batch_size}")
        self.source = source
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory  # page-locked batches: asynchronous copies to a GPU
        self.load_images = True  # the feature cache turns this off when the model embeds from it
        self.store: ProductStore | None = None
        self.device_store = device_store
        self.device_store_share = device_store_share
        self.resident: ResidentPixels | None = None  # the store's pixels where the model runs
        self._last_row: int | None = None  # the batch in transfer's largest row (on_before_batch_transfer)

    @property
    def resolved_image_size(self) -> int:
        """``image_size``; the pipeline sets it to the model's input size when the config leaves it null."""
        if not self.image_size:
            raise CtlError("data.image_size is null and no model has told its input size; set data.image_size")
        return int(self.image_size)

    @cached_property
    def categories(self) -> list[str]:
        """Every category of the dataset, sorted; known from the annotations alone, so that a
        type-aware model can be built (a subspace per pair of them) before the store is."""
        specs, _ = self.source.product_specs()
        return sorted({spec.category for spec in specs})

    def prepare_data(self) -> None:
        """Build the store if needed, once per datamodule: checking it against its sources (reading
        every annotation, a stat per image) took seconds at the release's scale, and Lightning calls
        this before every fit, test and predict."""
        self._open()

    def _open(self) -> ProductStore:
        if self.store is None:
            self.store = self.source.open_store(self.resolved_image_size)
        return self.store

    @property
    def pixels(self) -> ProductStore | ResidentPixels:
        """Where crops are read from by row id (``read(rows)``): the device store when it is in use."""
        return self.resident if self.resident is not None else self._open()

    def place_pixels(self) -> None:
        """Load the device store for the attached trainer's device when ``device_store`` applies there;
        idempotent, called from every ``setup``."""
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if device is None or not (self.device_store is True or (self.device_store == "auto" and device.type == "cuda")):
            self.resident = None
            return
        store = self._open()
        if self.resident is None or self.resident.device != device or self.resident.fingerprint != store.fingerprint:
            self.resident = ResidentPixels.load(store, device, self.device_store_share)

    def on_before_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        # The largest row the batch reads, while its ids are still on the host: the device store, while
        # it loads, waits for that row's chunk without reading a value from the GPU (a wait for the GPU).
        rows = [batch[key] for key in ROW_KEYS if key in batch and batch[key].numel()] if self.resident is not None else []
        self._last_row = max(int(ids.max()) for ids in rows) if rows else None
        return batch

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        last_row, self._last_row = self._last_row, None  # this batch's only
        if self.resident is not None and self.load_images and "images" not in batch and "row_ids" in batch:
            batch["images"] = self.resident.gather(batch["row_ids"], last_row)
        return batch

    def _loader(self, rows: np.ndarray, collate, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = RowsDataset(rows)
        workers = 0 if self.resident is not None else self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffle(dataset, self.seed) if shuffle else None,
            collate_fn=collate,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.pin_memory and self.resident is None,
            # Worker seeds come from this generator, not the global one, so loading never
            # shifts the global random state that dropout and resumed runs depend on.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def products_loader(self, rows: np.ndarray) -> DataLoader:
        """Unshuffled batches of the given products, for embedding them."""
        return self._loader(rows, ProductCollate(self._open(), self._host_images), self.eval_batch_size, shuffle=False)

    @property
    def _host_images(self) -> bool:
        """Whether the loader reads pixels from the store: not when the model embeds cached features,
        nor when the device store gives them after the transfer."""
        return self.load_images and self.resident is None


class TripletsDataModule(_StoreDataModule):
    """CTL outfits: sampled (or user-supplied) training triplets, held-out test sets, all products for predict.

    ``batching="outfits"`` trains on outfit-grouped batches instead: ``outfits_per_batch`` groups of
    at most ``items_per_outfit`` products of one training outfit each (drawn once per seed, shuffled
    per epoch like triplets), whose triplets are all those the batch's products can form. Validation
    always uses the sampled validation triplets.
    """

    has_test_sets = True

    def __init__(
        self,
        source: CtlSource,
        image_size: int | None = 64,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        triplets_per_outfit: int = 4,
        val_fraction: float = 0.1,
        seed: int = 0,
        dedup: bool = True,
        pin_memory: bool = False,
        batching: str = "triplets",
        outfits_per_batch: int = 32,
        items_per_outfit: int = 4,
        device_store: str | bool = "auto",
        device_store_share: float = 0.5,
        steps_per_call: int | None = None,
    ):
        super().__init__(source, image_size, batch_size, eval_batch_size, num_workers, seed, pin_memory, device_store, device_store_share)
        if triplets_per_outfit < 1:
            raise CtlError(f"triplets_per_outfit must be at least 1, got {triplets_per_outfit}")
        if batching not in BATCHINGS:
            raise CtlError(f"data.batching must be one of {', '.join(BATCHINGS)}, got {batching!r}")
        if outfits_per_batch < 2 or items_per_outfit < 2:
            raise CtlError(
                f"outfit-grouped batches need outfits_per_batch >= 2 and items_per_outfit >= 2 (a negative "
                f"and a positive), got {outfits_per_batch} and {items_per_outfit}"
            )
        if steps_per_call is not None and steps_per_call < 1:
            raise CtlError(f"data.steps_per_call must be a positive number of steps (or null), got {steps_per_call}")
        if steps_per_call is not None and batching != "triplets":
            raise CtlError(f"data.steps_per_call={steps_per_call} groups sampled triplets: it needs data.batching=triplets")
        self.triplets_per_outfit = triplets_per_outfit
        self.batching = batching
        self.steps_per_call = steps_per_call
        self.outfits_per_batch = outfits_per_batch
        self.items_per_outfit = items_per_outfit
        self.val_fraction = val_fraction
        self.dedup = dedup
        self.labels: np.ndarray | None = None
        self._device_tables: tuple[torch.Tensor, torch.Tensor] | None = None  # labels, category codes on the device
        self._distinct_rows: int | None = None  # the batch in transfer's distinct rows (on_before_batch_transfer)

    def _stream(self, name: str) -> np.random.Generator:
        return random_stream(self.seed, name)

    def _training_split_outfits(self) -> list[str]:
        specs, _ = self.source.product_specs()
        return list(dict.fromkeys(s.group for s in specs if s.split == "train"))

    @cached_property
    def validation_outfits(self) -> frozenset[str]:
        """``val_fraction`` of the training split's outfits, seeded, chosen before any triplet is drawn;
        none where the dataset has a validation split of its own (Polyvore's ``valid.json``).

        Choosing them first keeps every product of them out of training: not an anchor, positive,
        negative nor SoftTriple class. Known from the annotations alone, so ``num_classes`` can be
        asked before the store is built.
        """
        outfits = self._training_split_outfits()
        if self.source.validation_split or not outfits or not 0 < self.val_fraction < 1:
            return frozenset()
        chosen = self._stream("val").choice(len(outfits), size=max(1, round(self.val_fraction * len(outfits))), replace=False)
        return frozenset(outfits[i] for i in chosen)

    @property
    def num_classes(self) -> int:
        """Training outfits, validation ones excluded: the classes of class-based losses (SoftTriple uses outfit ids)."""
        return len(self._class_of_outfit())

    def _class_of_outfit(self) -> dict[str, int]:
        held = self.validation_outfits
        return {group: i for i, group in enumerate(g for g in self._training_split_outfits() if g not in held)}

    def setup(self, stage: str | None = None) -> None:
        self.place_pixels()
        if self.labels is not None:
            return
        store = self._open()
        table = store.table
        classes = self._class_of_outfit()
        # Validation and test products have no class (-1): no loss ever trains on them.
        self.labels = np.array([classes.get(g, -1) if s == "train" else -1 for g, s in zip(table.groups, table.splits)], dtype=np.int64)
        held = self.validation_outfits
        supplied = self.source.triplets()
        if supplied is not None:
            if self.batching == "outfits":
                raise CtlError(
                    f"data.batching=outfits groups the training outfits itself and would ignore {supplied.path}: "
                    "use data.batching=triplets with a triplet file"
                )
            is_validation = np.array([s == "train" and g in held for g, s in zip(table.groups, table.splits)], dtype=bool)
            triplets = triplets_from_items(table, supplied.records, str(supplied.path))
            self.train_triplets, self.val_triplets = split_supplied(triplets, is_validation, str(supplied.path))
        else:
            training = OutfitIndex(table, "train", classes, "the training outfits")
            self.train_triplets = sample_triplets(training, self.triplets_per_outfit, self._stream("train"))
            if self.batching == "outfits":
                self.train_groups = outfit_groups(training, self.items_per_outfit, self._stream("outfit_groups"))
            self.val_triplets = np.empty((0, 3), dtype=np.int64)
            validation = self._validation_index(table)
            if validation is not None:
                self.val_triplets = sample_triplets(validation, self.triplets_per_outfit, self._stream("val_triplets"))
        self.evaluation = held_out_sets(table, self.source, self.seed)
        trains_on = f"{len(self.train_groups)} outfit groups" if self.batching == "outfits" else f"{len(self.train_triplets)} triplets"
        log.info(
            f"{len(store)} products; train on {trains_on}; {len(self.val_triplets)} val triplets; "
            f"{len(self.evaluation.triplets)} held-out test triplets"
        )

    def _validation_index(self, table: ProductTable) -> OutfitIndex | None:
        if self.source.validation_split:
            return OutfitIndex(table, self.source.validation_split, name=f"the {self.source.validation_split!r} outfits")
        held = self.validation_outfits
        return OutfitIndex(table, "train", held, "the validation outfits") if held else None

    def _triplet_loader(self, triplets: np.ndarray, shuffle: bool) -> DataLoader:
        if self.resident is not None:
            return self._loader(triplets, triplet_rows, self.batch_size, shuffle)
        collate = TripletCollate(self._open(), self.labels, self.categories, self.load_images, self.dedup)
        return self._loader(triplets, collate, self.batch_size, shuffle)

    def on_before_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        # How many distinct rows a device-store batch has, counted on the host: deduplicating it on the
        # GPU then needs no wait to learn its size.
        self._distinct_rows = len(np.unique(batch["triplet_rows"].numpy())) if "triplet_rows" in batch and self.dedup else None
        return super().on_before_batch_transfer(batch, dataloader_idx)

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        distinct, self._distinct_rows = self._distinct_rows, None  # this batch's only
        if "triplet_rows" in batch:  # device store: deduplicated here, on the device
            batch = deduplicate(batch["triplet_rows"], *self._tables(batch["triplet_rows"].device), unique=self.dedup, distinct=distinct)
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Training labels and category codes of every store row, on ``device``, for :func:`deduplicate`
        (both are fixed once ``setup`` has run: copied again only to another device)."""
        if self._device_tables is None or self._device_tables[0].device != device:
            codes = category_codes(self._open(), self.categories)
            self._device_tables = (torch.from_numpy(self.labels).to(device), torch.from_numpy(codes).to(device))
        return self._device_tables

    def train_dataloader(self) -> DataLoader:
        if self.batching == "outfits":
            collate = OutfitCollate(self._open(), self.labels, self.categories, self._host_images)
            return self._loader(self.train_groups, collate, self.outfits_per_batch, shuffle=True)
        if self.steps_per_call is not None:  # the same shuffled order, steps_per_call batches at a time
            return self._loader(self.train_triplets, StepRows(self.batch_size), self.batch_size * self.steps_per_call, shuffle=True)
        return self._triplet_loader(self.train_triplets, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._triplet_loader(self.val_triplets, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.products_loader(self.evaluation.rows)

    @cached_property
    def predict_rows(self) -> np.ndarray:
        """One row per distinct picture (image and box) of the store: predict writes the catalogs from
        them. A product listed in several outfits (Polyvore) has a row per outfit but one catalog entry,
        so that it is not its own nearest neighbour. Computed once (the datamodule opens its store
        once): the loader and the catalog writer both ask, and at the release's 485,230 products each
        pass over the table takes most of a second."""
        table = self._open().table
        first: dict[tuple, int] = {}
        for row, picture in enumerate(zip(table.image_paths.tolist(), np.nan_to_num(table.boxes, nan=-1.0).tolist())):
            first.setdefault((picture[0], *picture[1]), row)
        return np.fromiter(first.values(), dtype=np.int64, count=len(first))

    def predict_dataloader(self) -> DataLoader:
        return self.products_loader(self.predict_rows)


class ProductsDataModule(_StoreDataModule):
    """All products of one split, unshuffled: the input of a catalog (e.g. STL products for similar search)."""

    has_test_sets = False

    def __init__(
        self,
        source: CtlSource,
        split: str | None = None,
        image_size: int | None = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        device_store: str | bool = "auto",
        device_store_share: float = 0.5,
    ):
        super().__init__(
            source, image_size, eval_batch_size, eval_batch_size, num_workers, seed, pin_memory, device_store, device_store_share
        )
        self.split = split

    def setup(self, stage: str | None = None) -> None:
        self.place_pixels()
        table = self._open().table
        self.rows = table.positions if self.split is None else table.rows_in_split(self.split)
        if len(self.rows) == 0:
            raise CtlError(f"{self.source.root}: no products in split {self.split!r}")

    @property
    def predict_rows(self) -> np.ndarray:
        return self.rows

    def predict_dataloader(self) -> DataLoader:
        return self.products_loader(self.predict_rows)
