"""In-batch triplets by the CTL protocol, and pytorch-metric-learning's miners restricted to it.

A batch's labels are outfit classes, so a plain miner would take any item of another outfit as a
negative, mostly of another category than the positive: the model would then learn to tell
categories apart, which the project's sampled triplets rule out (``data/triplets.py``). Here every
triplet keeps that protocol: the anchor and positive are of the same outfit and different
categories, and the negative is of the positive's category, from another outfit.

The library's miners do this unchanged through their reference set: for each category ``c`` of the
batch, the queries are the items of the other categories and the references the items of ``c``, so
a miner finds positives and negatives of ``c`` only. ``batch_hard`` then picks, per anchor and
positive category, the farthest positive and the closest negative; ``semihard`` keeps the triplets
whose negative is farther than the positive but within the margin; ``multi_similarity`` keeps its
hard pairs, combined per anchor into triplets.

A miner returns ``[T, 3]`` indices into the batch, the format of a batch's own ``triplets``, so any
loss that takes ``(embeddings, labels, triplets)`` (the triplet loss, a type-aware one) trains on
mined triplets as it does on sampled ones. Mining measures distances with the loss's own distance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pytorch_metric_learning import miners
from pytorch_metric_learning.distances import BaseDistance
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from ctl_lightning.errors import CtlError

MINERS = ("none", "batch_hard", "semihard", "multi_similarity")

IndexTuple = tuple[torch.Tensor, ...]


def per_positive_category(
    labels: torch.Tensor, categories: torch.Tensor, select: Callable[[torch.Tensor, torch.Tensor], IndexTuple]
) -> torch.Tensor:
    """``[T, 3]`` triplets gathered over the categories ``c`` of the batch.

    ``select(queries, references)`` gets the batch indices of the items not of ``c`` (anchors) and of
    ``c`` (positives and negatives) and returns pytorch-metric-learning index tuples into them
    (triplets, or anchor-positive and anchor-negative pairs).
    """
    parts = [torch.empty((0, 3), dtype=torch.long, device=labels.device)]
    for category in torch.unique(categories):
        queries = torch.nonzero(categories != category).squeeze(1)
        references = torch.nonzero(categories == category).squeeze(1)
        if len(queries) == 0:
            continue  # a batch of one category has no triplet
        anchors, positives, negatives = lmu.convert_to_triplets(select(queries, references), labels[queries], labels[references])
        parts.append(torch.stack([queries[anchors], references[positives], references[negatives]], dim=1))
    return torch.cat(parts)


def outfit_triplets(labels: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
    """Every triplet of the batch that the CTL protocol allows: what ``loss.miner=none`` trains on
    in an outfit-grouped batch."""
    return per_positive_category(labels, categories, lambda q, r: lmu.get_all_triplets_indices(labels[q], labels[r]))


def library_miner(name: str, margin: float, distance: BaseDistance) -> miners.BaseMiner:
    if name == "batch_hard":
        return miners.BatchHardMiner(distance=distance)
    if name == "semihard":
        return miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=distance)
    return miners.MultiSimilarityMiner(distance=distance)


class OutfitMiner(nn.Module):
    """A pytorch-metric-learning miner applied per positive category (see the module docstring)."""

    def __init__(self, name: str, margin: float, distance: BaseDistance):
        super().__init__()
        if name not in MINERS[1:]:
            raise CtlError(f"loss.miner must be one of {', '.join(MINERS)}, got {name!r}")
        self.name = name
        self.miner = library_miner(name, margin, distance)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        """``[T, 3]`` (anchor, positive, negative) indices into ``embeddings``, chosen without gradients."""
        embeddings = embeddings.detach()
        return per_positive_category(labels, categories, lambda q, r: self.miner(embeddings[q], labels[q], embeddings[r], labels[r]))


def make_miner(name: str, margin: float, distance: BaseDistance) -> OutfitMiner | None:
    """The miner ``loss.miner`` names, or None for ``none``: train on the batch's own triplets."""
    return None if name == "none" else OutfitMiner(name, margin, distance)
