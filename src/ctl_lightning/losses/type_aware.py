"""The type-aware loss (Vasileva et al., ECCV 2018): a triplet loss in the anchor-positive pair's subspace.

Called like every loss here, on the general embeddings of a batch's unique products and index tuples
into them, plus each product's category id and the model's :class:`CategorySubspaces`. A miner that
turns embeddings and labels into ``(anchor, positive, negative)`` indices can therefore feed it as it
feeds the plain triplet loss.

All three members of a triplet are measured in the subspace of the anchor's and the positive's
categories (the negative shares the positive's category in CTL and Polyvore triplets). Two
regularisers follow the paper, with its weights: the L1 norm of the subspace weights used (sparse
masks) and the L2 norm of the general embeddings (root mean square over the batch).
"""

from __future__ import annotations

import torch
from torch import nn

from ctl_lightning.losses.triplet import TripletLoss
from ctl_lightning.models.subspaces import CategorySubspaces


class TypeAwareTripletLoss(nn.Module):
    """:class:`TripletLoss` on subspace embeddings, plus ``mask_weight * L1 + embed_weight * L2``."""

    uses_classes = False  # scores any triplet, validation ones included
    uses_subspaces = True  # called with categories and the model's subspaces (model=type_aware)

    def __init__(
        self, margin: float = 0.3, distance: str = "euclidean", mask_weight: float = 5e-4, embed_weight: float = 5e-4, miner: str = "none"
    ):
        super().__init__()
        self.triplet = TripletLoss(margin=margin, distance=distance, normalize=True, miner=miner)
        self.miner = self.triplet.miner  # mines in the general embedding space, before the subspaces
        self.mask_weight = mask_weight
        self.embed_weight = embed_weight

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, triplets: torch.Tensor, categories: torch.Tensor, subspaces: CategorySubspaces
    ) -> torch.Tensor:
        anchors, positives, negatives = triplets.unbind(1)
        pairs = subspaces.pair_ids(categories[anchors], categories[positives])
        members = torch.cat([subspaces(embeddings[members], pairs) for members in (anchors, positives, negatives)])
        n = len(triplets)
        order = torch.arange(n, device=triplets.device)
        loss = self.triplet(members, labels, torch.stack([order, order + n, order + 2 * n], dim=1))
        embed_l2 = embeddings.float().pow(2).sum(1).mean().sqrt()
        return loss + self.mask_weight * subspaces.l1(pairs) + self.embed_weight * embed_l2
