"""Test metrics, computed from embeddings of the test products (docs/DESIGN.md section 4).

Every function takes L2-normalizable embeddings ``emb [M, D]`` of M products and ``position``, a
lookup from store row id to the embedding's index (-1 where a row was not embedded); the evaluation
sets are given as row ids. The same functions score trained embeddings and raw backbone features,
so the baseline is measured exactly like the model.

A type-aware model (``model=type_aware``) passes its ``subspaces`` and the category id of every store
row (``categories``): each item pair is then measured in the subspace of its two categories, a triplet
in that of its anchor and positive. Without them every pair is measured in the one embedding space.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

# The held-out metrics of a model, by key (under test/, baseline/ and oracle/ in metrics.json), with
# what tables call them; the one list the pipeline, the run's table and the experiments use.
HELD_OUT_METRICS = {
    "triplet_accuracy": "held-out triplet accuracy",
    "fitb_accuracy": "FITB accuracy (4 candidates)",
    "compatibility_auc": "compatibility AUC",
    "similar_style_at5": "similar products: style agreement@5",
}

# Item pairs measured at once in pair subspaces: bounds the memory of their [pairs, D] projections.
SUBSPACE_PAIRS_PER_CHUNK = 1 << 16


def position_lookup(row_ids: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``[n_rows]`` long tensor: index of each row id in ``row_ids``, -1 where absent."""
    lookup = torch.full((n_rows,), -1, dtype=torch.long)
    lookup[row_ids.cpu().long()] = torch.arange(len(row_ids))
    return lookup


def _gather(emb: torch.Tensor, position: torch.Tensor, rows) -> torch.Tensor:
    rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    if (rows < 0).any():  # a -1 pad would index position[-1]: the last row of the store, silently
        raise ValueError("a padded (-1) evaluation row was not masked")
    idx = position[rows]
    if (idx < 0).any():
        raise ValueError("an evaluation row was not embedded")
    return emb[idx]


def _gather_padded(emb: torch.Tensor, position: torch.Tensor, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of ``rows`` padded with -1, and the mask of real entries (pads gather a real row, then mask)."""
    valid = torch.as_tensor(rows >= 0)
    return _gather(emb, position, np.where(rows >= 0, rows, rows.max())), valid


def triplet_wins(
    emb: torch.Tensor,
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    subspaces=None,
    pairs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per triplet: cos(anchor, positive) > cos(anchor, negative) (ties lose), on ``emb``'s device;
    with ``subspaces``, measured in the subspace ``pairs`` names for each triplet."""
    if subspaces is None:
        emb = F.normalize(emb.float(), dim=1)
        a, p, n = emb[anchors], emb[positives], emb[negatives]
    else:
        a, p, n = (subspaces(emb[members], pairs) for members in (anchors, positives, negatives))
    return (a * p).sum(1) > (a * n).sum(1)


def triplet_accuracy(
    emb: torch.Tensor, position: torch.Tensor, triplets: np.ndarray, subspaces=None, categories: torch.Tensor | None = None
) -> float:
    """Share of triplets with cos(anchor, positive) > cos(anchor, negative); ties count as wrong."""
    a, p, n = (_gather(torch.arange(len(emb)), position, triplets[:, i]) for i in range(3))
    pairs = None if subspaces is None else subspaces.pair_ids(*(categories[torch.as_tensor(triplets[:, i])] for i in (0, 1)))
    return float(triplet_wins(emb, a, p, n, subspaces, pairs).float().mean())


def cosine_pairs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[n, K, L]`` cosine of every pair ``x[i, k], y[i, l]`` (unit-length rows): the CTL protocol's
    pair score (docs/DESIGN.md section 4)."""
    return torch.einsum("nkd,nld->nkl", x, y)


def pair_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[n, K, L]`` Euclidean distance of every pair ``x[i, k], y[i, l]``: Polyvore's pair measure
    (mvasil/fashion-compatibility), in the one embedding space; a type-aware model measures each pair
    in the subspace of its two categories instead (:class:`PairScore`)."""
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


# How a protocol scores an item pair, higher for more compatible; EvaluationSets.pair_measure names one.
PAIR_SCORES = {"cosine": cosine_pairs, "distance": lambda x, y: -pair_distances(x, y)}
# The same measures of aligned rows ``x[i], y[i]`` (unit length): pairs each in a subspace of its own.
ROW_SCORES = {"cosine": lambda x, y: (x * y).sum(-1), "distance": lambda x, y: -(x - y).norm(dim=-1)}


class PairScore:
    """``[n, K, L]`` scores of every pair ``x[i, k], y[i, l]`` of store rows ``rows_x``, ``rows_y``
    (pads -1 score anything: callers mask them) by the protocol's measure; with ``subspaces``, each
    pair measured in the subspace of its two categories (``categories``: category id per row id)."""

    def __init__(self, measure: str = "cosine", subspaces=None, categories: torch.Tensor | None = None):
        self.measure, self.subspaces, self.categories = measure, subspaces, categories

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rows_x: np.ndarray, rows_y: np.ndarray) -> torch.Tensor:
        if self.subspaces is None:
            return PAIR_SCORES[self.measure](x, y)
        (n, k, dim), width = x.shape, y.shape[1]
        category_x = self.categories[torch.as_tensor(np.maximum(rows_x, 0))]
        category_y = self.categories[torch.as_tensor(np.maximum(rows_y, 0))]
        pairs = self.subspaces.pair_ids(category_x[:, :, None].expand(n, k, width), category_y[:, None, :].expand(n, k, width))
        xs, ys = x[:, :, None].expand(n, k, width, dim), y[:, None].expand(n, k, width, dim)
        scores = torch.empty(n, k, width)
        step = max(1, SUBSPACE_PAIRS_PER_CHUNK // (k * width))
        for chunk in (slice(i, i + step) for i in range(0, n, step)):
            chunk_pairs = pairs[chunk].reshape(-1)
            mapped_x = self.subspaces(xs[chunk].reshape(-1, dim), chunk_pairs)
            mapped_y = self.subspaces(ys[chunk].reshape(-1, dim), chunk_pairs)
            scores[chunk] = ROW_SCORES[self.measure](mapped_x, mapped_y).reshape(-1, k, width)
        return scores


def _mean_score_to_set(
    emb: torch.Tensor, position: torch.Tensor, items: np.ndarray, groups: np.ndarray, pair_score: PairScore
) -> torch.Tensor:
    """For each row i: mean pair score of ``items[i, j]`` with the valid (>= 0) entries of ``groups[i]``;
    -inf for padded items, so they never rank above a real one."""
    g, valid = _gather_padded(emb, position, groups)  # [n, L, D]
    x, real = _gather_padded(emb, position, items)  # [n, K, D]
    scores = (pair_score(x, g, items, groups) * valid[:, None, :]).sum(-1) / valid.sum(-1, keepdim=True).clamp(min=1)
    return scores.masked_fill(~real, -float("inf"))


def fitb_accuracy(
    emb: torch.Tensor,
    position: torch.Tensor,
    questions: np.ndarray,
    answers: np.ndarray,
    pair_measure: str = "cosine",
    subspaces=None,
    categories: torch.Tensor | None = None,
) -> float:
    """Share of questions whose answer 0 scores strictly above every other real answer (ties lose, as in
    triplet accuracy: a model that scores all candidates alike must not look right); the score of a
    candidate is its mean pair score with the question items (with distances: the smallest summed
    distance wins, the question's size being the same for every candidate)."""
    emb = F.normalize(emb.float(), dim=1)
    scores = _mean_score_to_set(emb, position, answers, questions, PairScore(pair_measure, subspaces, categories))
    return float((scores[:, 1:] < scores[:, :1]).all(dim=1).float().mean())


def _outfit_scores(emb: torch.Tensor, position: torch.Tensor, outfits: np.ndarray, pair_score: PairScore) -> np.ndarray:
    """Mean pair score over the pairs of valid items of each outfit."""
    x, valid = _gather_padded(emb, position, outfits)
    k = outfits.shape[1]
    pairs = valid[:, :, None] & valid[:, None, :] & torch.ones(k, k, dtype=torch.bool).triu(1)
    return ((pair_score(x, x, outfits, outfits) * pairs).sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)).numpy()


def compatibility_auc(
    emb: torch.Tensor,
    position: torch.Tensor,
    outfits: np.ndarray,
    fake_outfits: np.ndarray,
    pair_measure: str = "cosine",
    subspaces=None,
    categories: torch.Tensor | None = None,
) -> float:
    """ROC AUC of real outfits against fake ones (random same-category items, or a compatibility
    file's label-0 outfits), an outfit scored by the mean pair score of its items."""
    emb = F.normalize(emb.float(), dim=1)
    pair_score = PairScore(pair_measure, subspaces, categories)
    real, fake = _outfit_scores(emb, position, outfits, pair_score), _outfit_scores(emb, position, fake_outfits, pair_score)
    labels = np.r_[np.ones(len(real)), np.zeros(len(fake))]
    return float(roc_auc_score(labels, np.r_[real, fake]))


def style_agreement_at_k(
    emb: torch.Tensor, rows: np.ndarray, queries: np.ndarray, categories: np.ndarray, styles: np.ndarray, k: int = 5
) -> float:
    """Share of each query's k nearest same-category neighbours (itself excluded) that share its style.

    ``emb[i]`` embeds row ``rows[i]``, the gallery; ``queries`` are row ids among ``rows``;
    ``categories`` and ``styles`` are indexed by row id. Products without a planted style (real
    data) are left out; NaN when no query has one.
    """
    emb = F.normalize(emb.float(), dim=1)
    rows = np.asarray(rows)
    is_query = np.isin(rows, queries)
    cats, sty = categories[rows], styles[rows]
    agreements = []
    for category in np.unique(cats):
        gallery = np.flatnonzero((cats == category) & (sty != ""))
        asked = gallery[is_query[gallery]]
        if len(asked) == 0 or len(gallery) < 2:
            continue
        sims = emb[torch.as_tensor(asked)] @ emb[torch.as_tensor(gallery)].T
        sims[torch.arange(len(asked)), torch.as_tensor(np.searchsorted(gallery, asked))] = -float("inf")
        top = sims.topk(min(k, len(gallery) - 1), dim=1).indices.numpy()
        agreements.append((sty[gallery][top] == sty[asked][:, None]).mean(axis=1))
    return float(np.concatenate(agreements).mean()) if agreements else float("nan")


def score_held_out(compatible: torch.Tensor, similar: torch.Tensor, row_ids: torch.Tensor, sets, subspaces=None) -> dict[str, float]:
    """The four held-out metrics (:data:`HELD_OUT_METRICS`) of one model; ``sets`` is the DataModule's :class:`EvaluationSets`.

    Compatibility metrics use the ``compatible`` (head) embeddings, in the pairs' ``subspaces`` for a
    type-aware model; similar-product agreement uses the ``similar`` ones (backbone features, the
    paper's similar-products embedding).
    """
    position = position_lookup(row_ids, len(sets.table))
    compatible, similar = compatible.detach().float().cpu(), similar.detach().float().cpu()
    fitb = sets.fitb
    pairwise = {"subspaces": subspaces, "categories": None if subspaces is None else subspaces.category_ids(sets.table.categories)}
    metrics = {
        "triplet_accuracy": triplet_accuracy(compatible, position, sets.triplets, **pairwise),
        "fitb_accuracy": fitb_accuracy(compatible, position, fitb.questions, fitb.answers, sets.pair_measure, **pairwise)
        if fitb
        else float("nan"),
        "compatibility_auc": compatibility_auc(compatible, position, sets.outfits, sets.fake_outfits, sets.pair_measure, **pairwise),
    }
    order = position[torch.as_tensor(sets.rows)]
    metrics["similar_style_at5"] = style_agreement_at_k(
        similar[order], sets.rows, sets.queries, sets.table.categories, sets.table.styles, k=5
    )
    return metrics
