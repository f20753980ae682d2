"""Test questions drawn from generated outfits, shared by the CTL and the Polyvore layouts.

Both draw from the outfits' labels alone, so each layout only formats the draws; the CTL files stay
byte-identical to what the generator wrote before the Polyvore layout existed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Place = tuple[int, int]  # (outfit, item) position in the outfit list


def fitb_draws(labels: Sequence[Sequence[str]], rng: np.random.Generator) -> list[tuple[Place, list[Place]]]:
    """One question per outfit of two items or more: the blank, and three wrong candidates of its label
    from other outfits (outfits whose label has too few of them get none)."""
    by_label: dict[str, list[Place]] = {}
    for o, outfit in enumerate(labels):
        for k, label in enumerate(outfit):
            by_label.setdefault(label, []).append((o, k))
    draws = []
    for o, outfit in enumerate(labels):
        blank = int(rng.integers(len(outfit)))
        pool = [place for place in by_label[outfit[blank]] if place[0] != o]
        if len(outfit) < 2 or len(pool) < 3:
            continue
        draws.append(((o, blank), [pool[i] for i in rng.choice(len(pool), size=3, replace=False)]))
    return draws


def random_outfits(sizes: Sequence[int], rng: np.random.Generator) -> list[list[Place]]:
    """For outfit ``o`` of ``sizes[o]`` items, as many distinct items drawn at random from the other
    outfits: the negatives of a compatibility file, as Vasileva et al. made them."""
    places = np.array([(o, k) for o, n in enumerate(sizes) for k in range(n)])
    negatives = []
    for o, n in enumerate(sizes):
        others = np.flatnonzero(places[:, 0] != o)
        negatives.append([tuple(int(v) for v in places[i]) for i in rng.choice(others, size=n, replace=False)])
    return negatives
