"""The seed's triplet loss, ``max(||a-p||^2 - ||a-n||^2 + margin, 0)``, averaged over the batch's
triplets: the sampled ones, or those its miner picks (``loss.miner``, :mod:`ctl_lightning.losses.mining`).

``distance=euclidean`` gives the type-aware paper's form, ``max(||a-p|| - ||a-n|| + margin, 0)``.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning import distances, losses, reducers
from torch import nn

from ctl_lightning.errors import CtlError
from ctl_lightning.losses.mining import make_miner

DISTANCES = ("squared_euclidean", "euclidean", "cosine")


class TripletLoss(nn.Module):
    """pytorch-metric-learning's TripletMarginLoss on the batch's explicit CTL triplets.

    Embeddings are L2-normalized first (``normalize=True``): the BatchNorm-then-Linear head could
    otherwise meet any margin by scaling its outputs up. On unit vectors the squared Euclidean
    distance is ``2 - 2 cos``, so margins are on a fixed scale. The reduction is the plain mean over
    all triplets, as in the seed, not pytorch-metric-learning's default mean over non-zero ones.

    ``miner`` (``none``, ``batch_hard``, ``semihard``, ``multi_similarity``) is built with the loss's
    margin and distance; the model calls it on training batches and passes its triplets here.
    """

    uses_classes = False  # scores any triplet, validation ones included

    def __init__(self, margin: float = 0.2, distance: str = "squared_euclidean", normalize: bool = True, miner: str = "none"):
        super().__init__()
        if distance not in DISTANCES:
            raise CtlError(f"loss.distance must be one of {DISTANCES}, got {distance!r}")
        metric = (
            distances.CosineSimilarity()
            if distance == "cosine"
            else distances.LpDistance(normalize_embeddings=normalize, p=2, power=2 if distance == "squared_euclidean" else 1)
        )
        self.loss = losses.TripletMarginLoss(margin=margin, distance=metric, reducer=reducers.MeanReducer())
        self.miner = make_miner(miner, margin, metric)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
        return self.loss(embeddings, indices_tuple=(triplets[:, 0], triplets[:, 1], triplets[:, 2]))
