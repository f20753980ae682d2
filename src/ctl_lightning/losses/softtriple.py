"""SoftTriple loss (Qian et al., ICCV 2019) with outfit ids as classes.

CTL has no product classes that express compatibility, but it has outfits: items worn together. Each
training outfit is a class, so SoftTriple pulls an item towards its outfit's K centers and away from
other outfits' centers. The number of centers grows with the number of outfits (``num_classes`` is
filled in at run time from the training split), which is the price of that choice on large data.

pytorch-metric-learning provides the loss. The paper's regulariser on the centers (weight tau) is
added explicitly: pytorch-metric-learning only applies it when given one, and its own
``SparseCentersRegularizer`` computes the similarities of all ``(C*K)^2`` center pairs. The one here
computes only the ``C*K*(K-1)/2`` pairs within each class, which are all the paper's sum needs.

Only training outfits are classes: validation and test products have label -1, so the loss cannot
score them (``uses_classes``) and validation is measured by triplet accuracy alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses
from pytorch_metric_learning.reducers import DivisorReducer
from pytorch_metric_learning.regularizers import BaseRegularizer
from torch import nn

from ctl_lightning.errors import CtlError


class SameClassCentersRegularizer(BaseRegularizer):
    """The paper's ``R = sum_j sum_{t<s} sqrt(2 + delta - 2 <w_j^t, w_j^s>) / (C*K*(K-1))``.

    The divisor is twice the number of pairs, as in the paper and pytorch-metric-learning's
    ``SparseCentersRegularizer`` (a ``DivisorReducer`` over the same pairs): half the mean over pairs.
    """

    def __init__(self, num_classes: int, centers_per_class: int, **kwargs):
        super().__init__(**kwargs)
        if centers_per_class < 2:
            raise CtlError(f"loss.centers_per_class: the centers regulariser needs at least 2 centers per class, got {centers_per_class}")
        self.num_classes = num_classes
        self.centers_per_class = centers_per_class
        self.pairs = torch.triu_indices(centers_per_class, centers_per_class, offset=1)

    def compute_loss(self, weights: torch.Tensor) -> dict:
        centers = F.normalize(weights, dim=1).view(self.num_classes, self.centers_per_class, -1)
        sims = torch.einsum("ckd,cld->ckl", centers, centers)[:, self.pairs[0], self.pairs[1]].reshape(-1)
        reg = torch.sqrt(torch.clamp(2.0 + 1e-5 - 2.0 * sims, min=0.0))
        divisor = self.num_classes * self.centers_per_class * (self.centers_per_class - 1)
        indices = torch.arange(len(reg), device=reg.device)
        return {"loss": {"losses": reg, "indices": indices, "reduction_type": "element", "divisor": divisor}}

    def get_default_reducer(self) -> DivisorReducer:
        return DivisorReducer()


class _FastSoftTriple(losses.SoftTripleLoss):
    """pytorch-metric-learning's SoftTriple with the same relaxed similarity computed faster.

    The library takes a softmax over the K centers of every class, a softmax along a dimension of 10
    that is slow on CPU (the dominant cost of a step with thousands of outfit classes). Cosines are at
    most 1, so ``exp(gamma * (s - 1))`` cannot overflow and gives the same weighted mean from plain
    element-wise operations, about 3x faster. tests/test_losses.py checks it equals the library's.
    """

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        sims = self.distance(embeddings, self.fc.t()).view(-1, self.num_classes, self.centers_per_class)
        weights = torch.exp((sims - 1.0) * self.gamma)  # self.gamma is the paper's 1/gamma
        return (weights * sims).sum(2) / weights.sum(2)


class SoftTripleLoss(nn.Module):
    """SoftTriple with the paper's defaults: lambda=20, gamma=0.1, tau=0.2, delta(margin)=0.01, K=10."""

    uses_classes = True  # scores only products of training outfits (label >= 0)
    miner = None  # trains on classes, not triplets: nothing to mine

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        centers_per_class: int = 10,
        la: float = 20.0,
        gamma: float = 0.1,
        tau: float = 0.2,
        margin: float = 0.01,
    ):
        super().__init__()
        regularizer = SameClassCentersRegularizer(num_classes, centers_per_class)
        self.loss = _FastSoftTriple(
            num_classes=num_classes,
            embedding_size=embedding_dim,
            centers_per_class=centers_per_class,
            la=la,
            gamma=gamma,
            margin=margin,
            weight_regularizer=regularizer,
            weight_reg_weight=tau,
        )

    @property
    def centers(self) -> nn.Parameter:
        """``[embedding_dim, num_classes * K]``: learned, so they must reach the optimizer."""
        return self.loss.fc

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
        known = labels >= 0
        if not bool(known.all()):
            raise CtlError("SoftTriple needs an outfit class for every product of the batch (got label -1)")
        # In float32 even under bf16 autocast (trainer=gpu): the library casts the centers to the
        # embeddings' dtype in place, and bf16 cosines near 1 step by 0.004, as coarse as delta=0.01.
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.loss(embeddings.float(), labels)
