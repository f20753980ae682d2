"""Triplets and the other evaluation sets, all as row ids into the product store.

The CTL protocol (the paper's section 2.2 and docs/DESIGN.md section 4): the anchor and positive come from
the same outfit but different categories; the negative has the positive's category and comes from
another outfit. Negatives must share the positive's category, or a model only learns to tell
categories apart.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from ctl_lightning.data.formats.ctl import CtlItem
from ctl_lightning.data.products import ProductTable
from ctl_lightning.errors import CtlError

log = logging.getLogger(__name__)


class OutfitIndex:
    """The outfits of one split (or of a subset of its outfits) and, per category, the products that can serve as negatives.

    Negatives are drawn from the same outfits as anchors and positives, so an index over the training
    outfits alone never lets a validation product into training.
    """

    def __init__(self, table: ProductTable, split: str, outfits: Collection[str] | None = None, name: str | None = None):
        self.name = name or f"split {split!r}"
        rows = table.rows_in_split(split)
        if outfits is not None:
            rows = rows[np.array([g in outfits for g in table.groups[rows]], dtype=bool)]
        if len(rows) == 0:
            raise CtlError(f"the product store has no products in {self.name}")
        self.table = table
        self.outfits: dict[str, np.ndarray] = {}
        for group, row in zip(table.groups[rows], rows):
            self.outfits.setdefault(group, []).append(row)  # type: ignore[arg-type]
        self.outfits = {g: np.asarray(r, dtype=np.int64) for g, r in self.outfits.items()}
        self.by_category: dict[str, np.ndarray] = {}
        for category in np.unique(table.categories[rows]):
            self.by_category[str(category)] = rows[table.categories[rows] == category]

    def _outfits_per_category(self) -> Counter:
        return Counter(str(c) for rows in self.outfits.values() for c in set(self.table.categories[rows]))

    def negative(self, category: str, outfit: str, rng: np.random.Generator) -> int:
        """A random product of ``category`` from an outfit other than ``outfit``."""
        pool = self.by_category[category]
        for _ in range(64):
            row = int(pool[rng.integers(len(pool))])
            if self.table.groups[row] != outfit:
                return row
        others = pool[self.table.groups[pool] != outfit]
        if len(others) == 0:
            raise CtlError(f"category {category!r} occurs only in outfit {outfit} of {self.name}: no negative is possible")
        return int(others[rng.integers(len(others))])


def sample_triplets(index: OutfitIndex, per_outfit: int, rng: np.random.Generator) -> np.ndarray:
    """``[T, 3]`` row ids (anchor, positive, negative), ``per_outfit`` per outfit that can form one.

    A category found in a single outfit has no negative, so its products are never positives (they
    can still anchor). A small validation subset often has such categories; the random draws are
    the same as without this rule whenever every category occurs in two outfits.
    """
    lonely = {c for c, n in index._outfits_per_category().items() if n < 2}
    if lonely:
        log.info(f"categories {sorted(lonely)} occur in a single outfit of {index.name}: never positives, having no negative")
    categories = index.table.categories
    triplets = []
    for outfit, rows in index.outfits.items():
        can_pair = np.array([c not in lonely for c in categories[rows]], dtype=bool)
        anchors = rows[[bool((can_pair & (categories[rows] != c)).any()) for c in categories[rows]]]
        if len(anchors) == 0:
            continue
        for _ in range(per_outfit):
            anchor = int(anchors[rng.integers(len(anchors))])
            candidates = rows[can_pair & (categories[rows] != categories[anchor])]
            positive = int(candidates[rng.integers(len(candidates))])
            triplets.append((anchor, positive, index.negative(str(categories[positive]), outfit, rng)))
    if not triplets:
        raise CtlError(f"no outfit of {index.name} has two categories with negatives: no triplet can be formed")
    return np.asarray(triplets, dtype=np.int64)


def outfit_groups(index: OutfitIndex, items_per_group: int, rng: np.random.Generator) -> np.ndarray:
    """``[G, items_per_group]`` row ids, -1 padded: each outfit's products in a random order, cut into
    as few groups of at most ``items_per_group`` as hold them all, as even as possible (7 items, 4 per
    group: 4 and 3). Every product of the index is in exactly one group, so an epoch over the groups
    trains on each product once; outfits with fewer items make one smaller group."""
    groups = []
    for rows in index.outfits.values():
        shuffled = rows[rng.permutation(len(rows))]
        groups.extend(np.array_split(shuffled, -(-len(rows) // items_per_group)))
    return _pad(groups)


def split_supplied(triplets: np.ndarray, is_validation: np.ndarray, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """User triplets -> (training, validation), given ``is_validation [N]`` per row id.

    A triplet validates when its anchor is from a validation outfit and trains when none of its
    products is; any other (say, a training anchor with a validation negative) would leak
    validation products into training, so it is dropped and counted.
    """
    held = is_validation[triplets]
    val, train = held[:, 0], ~held.any(axis=1)
    mixed = int((~val & ~train).sum())
    if mixed:
        log.warning(f"{origin}: {mixed} triplets mix training and validation outfits; dropped them (of {len(triplets)})")
    return triplets[train], triplets[val]


def _rows_of(table: ProductTable, keys: Sequence[str]) -> list[int | None]:
    return [table.row_of(key) for key in keys]


def _warn_missing(origin: str, skipped: int, total: int, what: str) -> None:
    if skipped:
        log.warning(f"{origin}: skipped {skipped} of {total} {what} whose products are not in the store")


def triplets_from_items(table: ProductTable, item_triplets: Sequence[Sequence[CtlItem]], origin: str) -> np.ndarray:
    """Map a user's triplet file onto row ids; triplets naming a product not in the store are counted and dropped."""
    rows, missing = [], 0
    for triplet in item_triplets:
        ids = _rows_of(table, [item.key for item in triplet])
        if any(i is None for i in ids):
            missing += 1
            continue
        rows.append(ids)
    _warn_missing(origin, missing, len(item_triplets), "triplets")
    if not rows:
        raise CtlError(f"{origin}: none of its {len(item_triplets)} triplets names products of the store")
    return np.asarray(rows, dtype=np.int64)


def _pad(groups: Sequence[Sequence[int]]) -> np.ndarray:
    width = max(len(g) for g in groups)
    out = np.full((len(groups), width), -1, dtype=np.int64)
    for i, g in enumerate(groups):
        out[i, : len(g)] = g
    return out


@dataclass
class FitbSet:
    """Fill-in-the-blank questions as padded row ids (-1 pads); ``answers[:, 0]`` is the right one."""

    questions: np.ndarray
    answers: np.ndarray
    skipped: int = 0


def fitb_rows(table: ProductTable, questions: Sequence[tuple[Sequence[str], Sequence[str]]], origin: str) -> FitbSet | None:
    """``(question keys, answer keys)`` pairs, the right answer first, as row ids; a question naming a
    product that is not in the store (its image was unreadable) is counted and dropped."""
    kept_q, kept_a, skipped = [], [], 0
    for question, answers in questions:
        qs, ans = _rows_of(table, question), _rows_of(table, answers)
        if any(i is None for i in qs + ans) or not qs:
            skipped += 1
            continue
        kept_q.append(qs)
        kept_a.append(ans)
    _warn_missing(origin, skipped, len(questions), "FITB questions")
    if not kept_q:
        return None
    return FitbSet(_pad(kept_q), _pad(kept_a), skipped)


def labelled_outfits(table: ProductTable, outfits: Sequence[tuple[int, Sequence[str]]], origin: str) -> tuple[np.ndarray, np.ndarray]:
    """A compatibility file's ``(label, keys)`` outfits as (label 1, label 0) padded row ids: the AUC of
    the first against the second is the AUC over the file's labels."""
    by_label: dict[int, list] = {0: [], 1: []}
    for label, keys in outfits:
        rows = _rows_of(table, keys)
        if None not in rows:
            by_label[label].append(rows)
    _warn_missing(origin, len(outfits) - len(by_label[0]) - len(by_label[1]), len(outfits), "outfits")
    if not by_label[0] or not by_label[1]:
        raise CtlError(f"{origin}: no outfit of label {0 if not by_label[0] else 1} has all its products in the store; no AUC")
    return _pad(by_label[1]), _pad(by_label[0])


def compatibility_sets(index: OutfitIndex, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Real outfits and, for each, a fake one: every item swapped for a random same-category item elsewhere."""
    real, fake = [], []
    for outfit, rows in index.outfits.items():
        if len(rows) < 2:
            continue
        real.append(rows)
        fake.append([index.negative(str(index.table.categories[r]), outfit, rng) for r in rows])
    return _pad(real), _pad(fake)
