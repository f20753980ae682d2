"""Test metrics, computed from embeddings of the test products (DESIGN.md section 4).

Every function takes L2-normalizable embeddings ``emb [M, D]`` of M products and ``position``, a
lookup from store row id to the embedding's index (-1 where a row was not embedded); the evaluation
sets are given as row ids. The same functions score trained embeddings and raw backbone features,
so the baseline is measured exactly like the model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score


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


def triplet_wins(emb: torch.Tensor, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Per triplet: cos(anchor, positive) > cos(anchor, negative) (ties lose), on ``emb``'s device."""
    emb = F.normalize(emb.float(), dim=1)
    a = emb[anchors]
    return (a * emb[positives]).sum(1) > (a * emb[negatives]).sum(1)


def triplet_accuracy(emb: torch.Tensor, position: torch.Tensor, triplets: np.ndarray) -> float:
    """Share of triplets with cos(anchor, positive) > cos(anchor, negative); ties count as wrong."""
    a, p, n = (_gather(torch.arange(len(emb)), position, triplets[:, i]) for i in range(3))
    return float(triplet_wins(emb, a, p, n).float().mean())


def cosine_pairs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[n, K, L]`` cosine of every pair ``x[i, k], y[i, l]`` (unit-length rows): the CTL protocol's
    pair score (DESIGN.md section 4)."""
    return torch.einsum("nkd,nld->nkl", x, y)


def pair_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[n, K, L]`` Euclidean distance of every pair ``x[i, k], y[i, l]``: Polyvore's pair measure
    (mvasil/fashion-compatibility). Measured here in the one embedding space; a type-aware model
    measures each pair in the subspace of the pair's two categories, and plugs in here."""
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


# How a protocol scores an item pair, higher for more compatible; EvaluationSets.pair_measure names one.
PAIR_SCORES = {"cosine": cosine_pairs, "distance": lambda x, y: -pair_distances(x, y)}


def _mean_score_to_set(emb: torch.Tensor, position: torch.Tensor, items: np.ndarray, groups: np.ndarray, pair_score) -> torch.Tensor:
    """For each row i: mean pair score of ``items[i, j]`` with the valid (>= 0) entries of ``groups[i]``;
    -inf for padded items, so they never rank above a real one."""
    g, valid = _gather_padded(emb, position, groups)  # [n, L, D]
    x, real = _gather_padded(emb, position, items)  # [n, K, D]
    scores = (pair_score(x, g) * valid[:, None, :]).sum(-1) / valid.sum(-1, keepdim=True).clamp(min=1)
    return scores.masked_fill(~real, -float("inf"))


def fitb_accuracy(emb: torch.Tensor, position: torch.Tensor, questions: np.ndarray, answers: np.ndarray, pair_measure: str = "cosine") -> float:
    """Share of questions whose answer 0 scores strictly above every other real answer (ties lose, as in
    triplet accuracy: a model that scores all candidates alike must not look right); the score of a
    candidate is its mean pair score with the question items (with distances: the smallest summed
    distance wins, the question's size being the same for every candidate)."""
    emb = F.normalize(emb.float(), dim=1)
    scores = _mean_score_to_set(emb, position, answers, questions, PAIR_SCORES[pair_measure])
    return float((scores[:, 1:] < scores[:, :1]).all(dim=1).float().mean())


def _outfit_scores(emb: torch.Tensor, position: torch.Tensor, outfits: np.ndarray, pair_score) -> np.ndarray:
    """Mean pair score over the pairs of valid items of each outfit."""
    x, valid = _gather_padded(emb, position, outfits)
    k = outfits.shape[1]
    pairs = valid[:, :, None] & valid[:, None, :] & torch.ones(k, k, dtype=torch.bool).triu(1)
    return ((pair_score(x, x) * pairs).sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)).numpy()


def compatibility_auc(emb: torch.Tensor, position: torch.Tensor, outfits: np.ndarray, fake_outfits: np.ndarray, pair_measure: str = "cosine") -> float:
    """ROC AUC of real outfits against fake ones (random same-category items, or a compatibility
    file's label-0 outfits), an outfit scored by the mean pair score of its items."""
    emb = F.normalize(emb.float(), dim=1)
    pair_score = PAIR_SCORES[pair_measure]
    real, fake = _outfit_scores(emb, position, outfits, pair_score), _outfit_scores(emb, position, fake_outfits, pair_score)
    labels = np.r_[np.ones(len(real)), np.zeros(len(fake))]
    return float(roc_auc_score(labels, np.r_[real, fake]))


def style_agreement_at_k(emb: torch.Tensor, rows: np.ndarray, queries: np.ndarray, categories: np.ndarray, styles: np.ndarray, k: int = 5) -> float:
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


def test_metrics(compatible: torch.Tensor, similar: torch.Tensor, row_ids: torch.Tensor, sets) -> dict[str, float]:
    """The four test metrics of one model; ``sets`` is the DataModule's :class:`EvaluationSets`.

    Compatibility metrics use the ``compatible`` (head) embeddings; similar-product agreement uses
    the ``similar`` ones (backbone features, the paper's similar-products embedding).
    """
    position = position_lookup(row_ids, len(sets.table))
    compatible, similar = compatible.detach().float().cpu(), similar.detach().float().cpu()
    fitb = sets.fitb
    metrics = {
        "triplet_accuracy": triplet_accuracy(compatible, position, sets.triplets),
        "fitb_accuracy": fitb_accuracy(compatible, position, fitb.questions, fitb.answers, sets.pair_measure) if fitb else float("nan"),
        "compatibility_auc": compatibility_auc(compatible, position, sets.outfits, sets.fake_outfits, sets.pair_measure),
    }
    order = position[torch.as_tensor(sets.rows)]
    metrics["similar_style_at5"] = style_agreement_at_k(
        similar[order], sets.rows, sets.queries, sets.table.categories, sets.table.styles, k=5
    )
    return metrics
