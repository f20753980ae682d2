"""Triplets and the other evaluation sets, all as row ids into the product store.

The CTL protocol (the paper's section 2.2 and DESIGN.md section 4): the anchor and positive come from
the same outfit but different categories; the negative has the positive's category and comes from
another outfit. Negatives must share the positive's category, or a model only learns to tell
categories apart.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ctl_lightning.data.formats.ctl import CtlItem, FitbQuestion
from ctl_lightning.data.products import ProductTable
from ctl_lightning.errors import CtlError

log = logging.getLogger(__name__)


class OutfitIndex:
    """The outfits of one split and, per category, the products that can serve as negatives."""

    def __init__(self, table: ProductTable, split: str):
        rows = table.rows_in_split(split)
        if len(rows) == 0:
            raise CtlError(f"the product store has no products in split {split!r}")
        self.table = table
        self.split = split
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
            raise CtlError(f"category {category!r} occurs only in outfit {outfit} of split {self.split!r}: no negative is possible")
        return int(others[rng.integers(len(others))])


def sample_triplets(index: OutfitIndex, per_outfit: int, rng: np.random.Generator) -> np.ndarray:
    """``[T, 3]`` row ids (anchor, positive, negative), ``per_outfit`` per outfit of two or more categories."""
    lonely = [c for c, n in index._outfits_per_category().items() if n < 2]
    if lonely:
        raise CtlError(f"categories {lonely} occur in a single outfit of split {index.split!r}: no negative is possible for them")
    categories = index.table.categories
    triplets = []
    for outfit, rows in index.outfits.items():
        if len(set(categories[rows])) < 2:
            continue
        for _ in range(per_outfit):
            anchor = int(rows[rng.integers(len(rows))])
            candidates = rows[categories[rows] != categories[anchor]]
            positive = int(candidates[rng.integers(len(candidates))])
            triplets.append((anchor, positive, index.negative(str(categories[positive]), outfit, rng)))
    if not triplets:
        raise CtlError(f"no outfit of split {index.split!r} has two categories: no triplet can be formed")
    return np.asarray(triplets, dtype=np.int64)


def split_by_outfit(triplets: np.ndarray, table: ProductTable, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``fraction`` of the triplets for validation, whole anchor outfits at a time (no leakage)."""
    if not 0 < fraction < 1:
        return triplets, triplets[:0]
    outfits = np.unique(table.groups[triplets[:, 0]])
    held = set(rng.choice(outfits, size=max(1, int(round(fraction * len(outfits)))), replace=False))
    is_val = np.array([g in held for g in table.groups[triplets[:, 0]]])
    return triplets[~is_val], triplets[is_val]


def _rows_of(table: ProductTable, items: Sequence[CtlItem]) -> list[int | None]:
    return [table.row_of(item.key) for item in items]


def triplets_from_items(table: ProductTable, item_triplets: Sequence[Sequence[CtlItem]], origin: str) -> np.ndarray:
    """Map a user's triplet file onto row ids; triplets naming a product not in the store are counted and dropped."""
    rows, missing = [], 0
    for triplet in item_triplets:
        ids = _rows_of(table, triplet)
        if any(i is None for i in ids):
            missing += 1
            continue
        rows.append(ids)
    if missing:
        log.warning(f"{origin}: skipped {missing} of {len(item_triplets)} triplets whose products are not in the store")
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


def fitb_rows(table: ProductTable, questions: Sequence[FitbQuestion], origin: str) -> FitbSet | None:
    kept_q, kept_a, skipped = [], [], 0
    for q in questions:
        qs, ans = _rows_of(table, q.question), _rows_of(table, q.answers)
        if any(i is None for i in qs + ans) or not qs:
            skipped += 1
            continue
        kept_q.append(qs)
        kept_a.append(ans)
    if skipped:
        log.warning(f"{origin}: skipped {skipped} of {len(questions)} FITB questions whose products are not in the store")
    if not kept_q:
        return None
    return FitbSet(_pad(kept_q), _pad(kept_a), skipped)


def compatibility_sets(index: OutfitIndex, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Real outfits and, for each, a fake one: every item swapped for a random same-category item elsewhere."""
    real, fake = [], []
    for outfit, rows in index.outfits.items():
        if len(rows) < 2:
            continue
        real.append(rows)
        fake.append([index.negative(str(index.table.categories[r]), outfit, rng) for r in rows])
    return _pad(real), _pad(fake)
