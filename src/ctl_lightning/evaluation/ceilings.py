"""Ceilings and shortcuts of the benchmark world, scored on the same held-out sets as a model.

A scorer gives a compatibility score to a candidate given the items it must go with; the three
protocols (triplets, FITB, compatibility AUC) are then computed from it. Two kinds of scorer:

- the **oracle**: the generator's own likelihood ratio on the true latent attributes, summed over
  every look. No model can beat it on average; it is the task's ceiling.
- **identity rules**: "the candidate shares attribute X with the items". Such rules give many ties;
  they are broken at random, so a rule is credited with its expected accuracy (a tie is worth one
  half in a triplet, 1/k among k tied FITB candidates, and AUC counts ties as one half).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from ctl_lightning.data.datamodules import EvaluationSets, held_out_sets
from ctl_lightning.data.products import ProductTable
from ctl_lightning.data.sources import CtlSource
from ctl_lightning.data.store import by_image
from ctl_lightning.data.synthetic.benchmark import ATTRIBUTES_FILE, read_attributes
from ctl_lightning.data.synthetic.world import Item, log_likelihoods

# score(candidates [n], context rows [n, L] padded with -1) -> [n] scores
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def triplet_accuracy(score: Scorer, triplets: np.ndarray) -> float:
    """Share of triplets whose positive outscores the negative; a tie counts one half."""
    context = triplets[:, :1]
    pos, neg = score(triplets[:, 1], context), score(triplets[:, 2], context)
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def fitb_accuracy(score: Scorer, questions: np.ndarray, answers: np.ndarray) -> float:
    """Expected accuracy when the best-scoring candidates are tied and one is picked at random."""
    scores = np.stack([score(answers[:, j], questions) for j in range(answers.shape[1])], axis=1)
    scores = np.where(answers >= 0, scores, -np.inf)
    best = scores.max(axis=1, keepdims=True)
    tied = (scores == best).sum(axis=1)
    return float(np.mean((scores[:, 0] == best[:, 0]) / tied))


def compatibility_auc(outfit_score: Callable[[np.ndarray], np.ndarray], outfits: np.ndarray, fakes: np.ndarray) -> float:
    real, fake = outfit_score(outfits), outfit_score(fakes)
    return float(roc_auc_score(np.r_[np.ones(len(real)), np.zeros(len(fake))], np.r_[real, fake]))


def protocol_scores(score: Scorer, outfit_score: Callable[[np.ndarray], np.ndarray], sets: EvaluationSets) -> dict[str, float]:
    result = {"triplet_accuracy": triplet_accuracy(score, sets.triplets)}
    if sets.fitb is not None:
        result["fitb_accuracy"] = fitb_accuracy(score, sets.fitb.questions, sets.fitb.answers)
    result["compatibility_auc"] = compatibility_auc(outfit_score, sets.outfits, sets.fake_outfits)
    return result


def annotation_sets(source: CtlSource, seed: int) -> EvaluationSets:
    """The held-out sets a run with ``seed`` tests on, from the annotations alone (no image is read):
    the table lists the products in the order a store holds them."""
    specs, _ = source.product_specs()
    table = ProductTable([spec for group in by_image(specs).values() for spec in group])
    return held_out_sets(table, source, seed)


def latent_items(table: ProductTable, root: Path, split: str = "test") -> dict[int, Item] | None:
    """The latent truth of ``split``'s products by row id; None where the data has none (real data,
    the toy world)."""
    path = Path(root) / ATTRIBUTES_FILE
    if not path.is_file():
        return None
    truth = read_attributes(path)
    return {int(row): truth[str(table.keys[row])].item for row in table.rows_in_split(split)}


def oracle_metrics(sets: EvaluationSets, root: Path) -> dict[str, float]:
    """The oracle on a run's held-out sets, or nothing where the data has no latent truth."""
    items = latent_items(sets.table, root)
    return {} if items is None else oracle_scores(sets.table.categories, items, sets)


def oracle_scores(categories: np.ndarray, items: dict[int, Item], sets: EvaluationSets) -> dict[str, float]:
    """The generator's likelihood ratio p(candidate | context, same outfit) / p(candidate)."""
    rows = sorted(items)
    position = {row: i for i, row in enumerate(rows)}
    ll = log_likelihoods([str(categories[r]) for r in rows], [items[r] for r in rows]).astype(np.float32)
    ll = np.vstack([ll, np.zeros(ll.shape[1])])  # padding (-1) maps to this neutral last row
    marginal = logsumexp(ll, axis=1)  # up to the prior's constant, shared by every item

    def index(a: np.ndarray) -> np.ndarray:
        return np.vectorize(lambda r: position.get(int(r), len(rows)), otypes=[np.int64])(a)

    def score(candidates: np.ndarray, context: np.ndarray) -> np.ndarray:
        c = index(candidates)
        return logsumexp(ll[index(context)].sum(axis=1) + ll[c], axis=1) - marginal[c]

    def outfit_score(outfits: np.ndarray) -> np.ndarray:
        o = index(outfits)
        n = (outfits >= 0).sum(axis=1)
        joint = logsumexp(ll[o].sum(axis=1), axis=1) - np.log(ll.shape[1])
        return joint - (marginal[o].sum(axis=1) - marginal[-1] * (outfits < 0).sum(axis=1) - n * np.log(ll.shape[1]))

    return protocol_scores(score, outfit_score, sets)


def attribute_rule_scores(values: np.ndarray, sets: EvaluationSets) -> dict[str, float]:
    """Identity rule on one attribute, ``values`` indexed by row id: the share of context items whose
    value equals the candidate's (an outfit: the share of equal pairs)."""

    def score(candidates: np.ndarray, context: np.ndarray) -> np.ndarray:
        same = (values[context] == values[candidates][:, None]) & (context >= 0)
        return same.sum(axis=1) / np.maximum((context >= 0).sum(axis=1), 1)

    def outfit_score(outfits: np.ndarray) -> np.ndarray:
        valid = outfits >= 0
        v = values[outfits]
        same = (v[:, :, None] == v[:, None, :]) & valid[:, :, None] & valid[:, None, :]
        n = valid.sum(axis=1)
        return (same.sum(axis=(1, 2)) - n) / np.maximum(n * (n - 1), 1)

    return protocol_scores(score, outfit_score, sets)


def embedding_scores(embeddings: np.ndarray, sets: EvaluationSets) -> dict[str, float]:
    """Cosine-similarity scorer of any per-row features (colour histograms, backbone features);
    ``embeddings`` is indexed by row id."""
    emb = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    emb = np.vstack([emb, np.zeros(emb.shape[1])])  # row -1: padding

    def score(candidates: np.ndarray, context: np.ndarray) -> np.ndarray:
        sims = np.einsum("nd,nld->nl", emb[candidates], emb[context])
        return (sims * (context >= 0)).sum(axis=1) / np.maximum((context >= 0).sum(axis=1), 1)

    def outfit_score(outfits: np.ndarray) -> np.ndarray:
        x = emb[outfits]
        n = (outfits >= 0).sum(axis=1)
        sims = np.einsum("nkd,nld->nkl", x, x)
        return (sims.sum(axis=(1, 2)) - np.einsum("nkd,nkd->n", x, x)) / np.maximum(n * (n - 1), 1)

    return protocol_scores(score, outfit_score, sets)


# The single-attribute identity rules: "the candidate shares this attribute with the items".
IDENTITY_RULES: dict[str, Callable[[Item], object]] = {
    "same pattern": lambda item: item.pattern,
    "same texture": lambda item: item.texture,
    "same hue bin (30 degrees)": lambda item: int(((item.hue + 15) % 360) // 30),
    "same lightness bin (quarters)": lambda item: min(int(item.light * 4), 3),
    "same silhouette": lambda item: item.silhouette,
}


def identity_rule_scores(items: dict[int, Item], n_rows: int, sets: EvaluationSets) -> dict[str, dict[str, float]]:
    """Every identity rule on the held-out sets, from the latent truth of their products."""
    results = {}
    for name, attribute in IDENTITY_RULES.items():
        values = np.full(n_rows, None, dtype=object)
        for row, item in items.items():
            values[row] = attribute(item)
        results[name] = attribute_rule_scores(values, sets)
    return results


def colour_histograms(images: np.ndarray, bins: tuple[int, int, int] = (12, 4, 4)) -> np.ndarray:
    """``[N, H*S*V bins]`` normalised HSV histograms of uint8 RGB crops ``[N, H, W, 3]``."""
    from PIL import Image

    out = np.zeros((len(images), int(np.prod(bins))), dtype=np.float32)
    for i, crop in enumerate(images):
        hsv = np.asarray(Image.fromarray(np.asarray(crop)).convert("HSV"), dtype=np.int64).reshape(-1, 3)
        h, s, v = (hsv[:, j] * bins[j] // 256 for j in range(3))
        out[i] = np.bincount((h * bins[1] + s) * bins[2] + v, minlength=out.shape[1]) / len(hsv)
    return out
