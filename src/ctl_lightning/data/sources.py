"""Datasets on disk, as lists of products for the store: CTL, STL, Polyvore Outfits, and the synthetic
versions of each.

A source knows its folder layout and annotation files; it turns them into :class:`ProductSpec` rows
and opens (building if needed) the product store for a crop size. Synthetic sources first generate
their folder when it is missing, so the default configuration needs nothing but this package.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from ctl_lightning.data.formats import (
    ParseResult,
    read_ctl_fitb,
    read_ctl_raw,
    read_ctl_triplets,
    read_stl_categories,
    read_stl_products,
)
from ctl_lightning.data.formats.common import RowPolicy, RowRejected, read_text_lines
from ctl_lightning.data.formats.ctl import CtlItem
from ctl_lightning.data.formats.polyvore import (
    METADATA_FILE,
    SPLITS,
    PolyvoreSplit,
    read_polyvore_split,
)
from ctl_lightning.data.products import ProductSpec
from ctl_lightning.data.store import ProductStore
from ctl_lightning.data.synthetic import SynthConfig, generate, is_complete
from ctl_lightning.errors import CtlError
from ctl_lightning.io import exclusive_lock

log = logging.getLogger(__name__)

STYLES_FILE = "synthetic_styles.tsv"


def _read_styles(path: Path) -> dict[str, str]:
    """Planted styles of a synthetic dataset (``key<TAB>style``); empty for real data."""
    if not path.is_file():
        return {}
    styles = {}
    for number, text in read_text_lines(path):
        if number == 1:
            continue
        key, _, style = text.partition("\t")
        styles[key] = style
    return styles


def _note_skips(skips: dict[str, dict[str, int]], result: ParseResult) -> None:
    if result.skipped:
        skips[str(result.path)] = dict(result.skipped)
        log.warning(result.skip_summary())


def _drop_duplicates(specs: list[ProductSpec], path: Path, on_error: str, skips: dict) -> list[ProductSpec]:
    """A product listed twice is a data error; under ``on_error=skip`` the repeats are counted."""
    policy = RowPolicy(path, on_error)
    seen: set[str] = set()
    unique = []
    for spec in specs:
        if spec.key in seen:
            policy.reject(f"product {spec.key}", RowRejected("duplicate product"))
            continue
        seen.add(spec.key)
        unique.append(spec)
    if policy.skipped:
        skips.setdefault(str(path), {}).update(policy.skipped)
    return unique


class CtlSource:
    """Complete the Look: ``raw_train.tsv``, ``raw_test.tsv``, collages in ``images/<signature>.jpg``."""

    kind = "ctl"
    validation_split: str | None = None  # None: validate on a share of the training outfits
    compatibility_file: str | None = None  # None: the protocol draws a fake outfit per test outfit
    pair_measure = "cosine"  # how the test protocol scores an item pair (docs/DESIGN.md section 4)

    def __init__(
        self,
        root: str | Path,
        train_file: str = "raw_train.tsv",
        test_file: str | None = "raw_test.tsv",
        fitb_file: str | None = "fitb_test.json",
        triplets_file: str | None = None,
        images_dir: str = "images",
        store_dir: str | Path | None = None,
        on_error: str = "raise",
    ):
        self.root = Path(root)
        self.train_file = train_file
        self.test_file = test_file
        self.fitb_file = fitb_file
        self.triplets_file = triplets_file
        self.images_dir = images_dir
        self.store_dir = Path(store_dir) if store_dir else None
        self.on_error = on_error
        self._specs: tuple[list[ProductSpec], dict[str, dict[str, int]]] | None = None

    def ensure(self) -> None:
        """Make the annotation files exist (real data: check; synthetic: generate)."""
        if not (self.root / self.train_file).is_file():
            raise CtlError(f"{self.root / self.train_file}: file not found; point data.source.root at the CTL folder")

    def _path(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.root / path

    def product_specs(self) -> tuple[list[ProductSpec], dict[str, dict[str, int]]]:
        """The products the annotations list, and the rows skipped per file; read once per source."""
        if self._specs is None:
            self.ensure()
            self._specs = self._read_product_specs()
        return self._specs

    def _read_product_specs(self) -> tuple[list[ProductSpec], dict[str, dict[str, int]]]:
        styles = _read_styles(self.root / STYLES_FILE)
        skips: dict[str, dict[str, int]] = {}
        specs: list[ProductSpec] = []
        for split, name in (("train", self.train_file), ("test", self.test_file)):
            if not name:
                continue
            result = read_ctl_raw(self._path(name), on_error=self.on_error)
            _note_skips(skips, result)
            specs += [self._spec(item, split, styles) for item in result.records]
        return _drop_duplicates(specs, self._path(self.train_file), self.on_error, skips), skips

    def _spec(self, item: CtlItem, split: str, styles: dict[str, str]) -> ProductSpec:
        source = str(self.root / self.images_dir / f"{item.signature}.jpg")
        box = (item.x, item.y, item.w, item.h)
        return ProductSpec(item.key, item.signature, item.label, split, source, box, styles.get(item.key, ""))

    def fitb(self) -> list[tuple[list[str], list[str]]]:
        """FITB questions as (question keys, answer keys), the right answer first."""
        if not self.fitb_file or not self._path(self.fitb_file).is_file():
            return []
        result = read_ctl_fitb(self._path(self.fitb_file), on_error=self.on_error)
        _note_skips({}, result)
        return [([item.key for item in q.question], [item.key for item in q.answers]) for q in result.records]

    def compatibility(self) -> list[tuple[int, list[str]]] | None:
        """A compatibility file's ``(label, product keys)`` outfits; CTL has none."""
        return None

    def triplets(self) -> ParseResult | None:
        """User-supplied training triplets (18-column TSV), or None to sample them."""
        if not self.triplets_file:
            return None
        result = read_ctl_triplets(self._path(self.triplets_file), on_error=self.on_error)
        _note_skips({}, result)
        return result

    def store_path(self, size: int) -> Path:
        return (self.store_dir or self.root / "store") / f"{self.kind}-{size}px"

    def open_store(self, size: int, workers: int = 0) -> ProductStore:
        specs, skips = self.product_specs()
        store = ProductStore.ensure(specs, self.store_path(size), size, skips, workers=workers)
        excluded = store.manifest["report"]["excluded_products"]
        if excluded:
            log.warning(f"{store.path}: {excluded} products excluded for unreadable images (see {store.path}/manifest.json)")
        return store


class StlSource(CtlSource):
    """Shop the Look: ``fashion.json``, ``fashion-cat.json``, product shots in ``products/<signature>.jpg``."""

    kind = "stl"

    def __init__(
        self,
        root: str | Path,
        products_file: str = "fashion.json",
        categories_file: str = "fashion-cat.json",
        images_dir: str = "products",
        store_dir: str | Path | None = None,
        on_error: str = "raise",
    ):
        super().__init__(
            root, train_file=products_file, test_file=None, fitb_file=None, images_dir=images_dir, store_dir=store_dir, on_error=on_error
        )
        self.categories_file = categories_file

    def _read_product_specs(self) -> tuple[list[ProductSpec], dict[str, dict[str, int]]]:
        styles = _read_styles(self.root / STYLES_FILE)
        skips: dict[str, dict[str, int]] = {}
        pairs = read_stl_products(self._path(self.train_file), on_error=self.on_error)
        categories = read_stl_categories(self._path(self.categories_file), on_error=self.on_error)
        _note_skips(skips, pairs)
        _note_skips(skips, categories)
        category_of = dict(categories.records)
        specs, uncategorized = [], Counter()
        seen: set[str] = set()
        for pair in pairs.records:
            if pair.product in seen:  # a product appears in several scenes; its shot is stored once
                continue
            seen.add(pair.product)
            if pair.product not in category_of:
                uncategorized["product without category"] += 1
                continue
            source = str(self.root / self.images_dir / f"{pair.product}.jpg")
            specs.append(
                ProductSpec(pair.product, pair.scene, category_of[pair.product], "catalog", source, None, styles.get(pair.product, ""))
            )
        if uncategorized:
            skips.setdefault(str(self._path(self.categories_file)), {}).update(uncategorized)
            log.warning(f"{self._path(self.categories_file)}: {uncategorized.total()} products have no category and are left out")
        return specs, skips


class _Synthetic:
    """Mix-in: generate the synthetic dataset into a folder under ``root`` named by its settings when
    it is missing. ``world``: ``bench`` (the default benchmark world, with its ``split``) or ``toy``.
    A subclass that sets ``synth`` itself reuses :meth:`ensure` alone."""

    def __init__(
        self,
        root: str | Path,
        seed: int = 0,
        outfits: int = 5000,
        styles: int = 16,
        scenes: int = 300,
        world: str = "bench",
        split: str = "nondisjoint",
        **kwargs,
    ):
        name = f"seed{seed}-outfits{outfits}-styles{styles}" if world == "toy" else f"bench-{split}-seed{seed}-outfits{outfits}"
        self.synth = SynthConfig(out=Path(root) / name, seed=seed, outfits=outfits, styles=styles, scenes=scenes, world=world, split=split)
        super().__init__(self.synth.out / self.kind, **kwargs)  # type: ignore[call-arg]

    def ensure(self) -> None:
        if is_complete(self.synth.out, self.synth):
            return
        with exclusive_lock(self.synth.out):
            if not is_complete(self.synth.out, self.synth):
                log.info(f"generating the synthetic dataset into {self.synth.out}")
                generate(self.synth)


class SyntheticCtl(_Synthetic, CtlSource):
    """The embedded synthetic CTL dataset, generated on first use."""


class SyntheticStl(_Synthetic, StlSource):
    """The embedded synthetic STL dataset, generated on first use."""


class PolyvoreSource(CtlSource):
    """``polyvore_outfits/``: trains on ``<split>/train.json``, validates on ``valid.json`` and tests on
    ``compatibility_test.txt`` and ``fill_in_blank_test.json``, scored by pair distance as Vasileva et al. do.

    An item may be listed in several outfits (in the nondisjoint split, across train and test too). The
    store holds one row per ``<set_id>_<index>`` token, the name the question files use, so that each
    row belongs to one outfit as in CTL and the triplet sampler works unchanged; a picture listed twice
    is stored twice but catalogs list it once (``TripletsDataModule.predict_rows``). A row's category
    is the item's ``semantic_category``, which a type-aware model reads from the product table.
    """

    kind = "polyvore_outfits"
    validation_split = "valid"
    pair_measure = "distance"

    def __init__(
        self,
        root: str | Path,
        split: str = "nondisjoint",
        images_dir: str = "images",
        store_dir: str | Path | None = None,
        on_error: str = "raise",
    ):
        if split not in SPLITS:
            raise CtlError(f"data.source.split must be one of {', '.join(SPLITS)}, got {split!r}")
        super().__init__(
            root,
            train_file=METADATA_FILE,
            test_file=None,
            fitb_file=f"{split}/fill_in_blank_test.json",
            images_dir=images_dir,
            store_dir=store_dir,
            on_error=on_error,
        )
        self.split = split
        self.compatibility_file = f"{split}/compatibility_test.txt"
        self._dataset: PolyvoreSplit | None = None

    def ensure(self) -> None:
        if not (self.root / METADATA_FILE).is_file():
            raise CtlError(f"{self.root / METADATA_FILE}: file not found; point data.source.root at the polyvore_outfits folder")

    def dataset(self) -> PolyvoreSplit:
        """The split's files, read once."""
        if self._dataset is None:
            self.ensure()
            self._dataset = read_polyvore_split(self.root, self.split, self.on_error)
        return self._dataset

    def _read_product_specs(self) -> tuple[list[ProductSpec], dict[str, dict[str, int]]]:
        styles = _read_styles(self.root / STYLES_FILE)
        dataset = self.dataset()
        skips: dict[str, dict[str, int]] = {}
        for result in dataset.results:
            _note_skips(skips, result)
        specs = []
        for part, outfits in dataset.outfits.items():
            for outfit in outfits:
                specs += [
                    ProductSpec(
                        item.token,
                        outfit.set_id,
                        item.category,
                        part,
                        str(self.root / self.images_dir / f"{item.item_id}.jpg"),
                        None,
                        styles.get(item.token, ""),
                    )
                    for item in outfit.items
                ]
        return _drop_duplicates(specs, self.root / self.split, self.on_error, skips), skips

    def fitb(self) -> list[tuple[list[str], list[str]]]:
        """The FITB file's questions, each answer list reordered so that the right one comes first."""
        return [
            ([*q.question], [q.answers[q.correct], *(a for i, a in enumerate(q.answers) if i != q.correct)]) for q in self.dataset().fitb
        ]

    def compatibility(self) -> list[tuple[int, list[str]]]:
        return [(q.label, [*q.tokens]) for q in self.dataset().compatibility]

    def store_path(self, size: int) -> Path:
        return (self.store_dir or self.root / "store") / f"polyvore-{self.split}-{size}px"


class SyntheticPolyvore(_Synthetic, PolyvoreSource):
    """The benchmark world in the Polyvore layout, both splits in one folder, generated on first use;
    ``split`` picks the one read."""

    def __init__(self, root: str | Path, seed: int = 0, outfits: int = 5000, split: str = "nondisjoint", **kwargs):
        self.synth = SynthConfig(
            out=Path(root) / f"bench-polyvore-seed{seed}-outfits{outfits}", seed=seed, outfits=outfits, layout="polyvore"
        )
        PolyvoreSource.__init__(self, self.synth.out / self.kind, split=split, **kwargs)
