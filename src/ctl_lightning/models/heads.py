"""The paper's embedding head: Linear -> BatchNorm1d -> Dropout -> Linear."""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingHead(nn.Sequential):
    """Maps backbone features to the compatibility embedding.

    The paper found the BatchNorm essential: without it training collapsed to identical embeddings
    for anchor, positive and negative (a trivially low loss and useless recommendations).
    """

    def __init__(self, in_features: int, hidden_dim: int = 256, embedding_dim: int = 128, dropout: float = 0.4):
        super().__init__(
            nn.Linear(in_features, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, embedding_dim),
        )
        self.embedding_dim = embedding_dim

    def forward_members(self, features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """What training-mode ``forward`` gives over a batch's distinct products, at the shape of
        every triplet member: ``features[i]`` are those of store row ``rows[i]``, duplicates included.

        A batch deduplicated first has a row count that varies from batch to batch; a fixed shape
        can be captured in a CUDA graph. So each member counts ``1 / (its row's multiplicity)`` in the
        BatchNorm statistics (each distinct product once, as in the deduplicated batch, running
        statistics included), and duplicates share one dropout mask (one draw per distinct product).
        The loss, a function of the distinct products' embeddings, is then the deduplicated batch's,
        and so are its gradients.
        """
        linear, norm, dropout, out = self
        same = rows[:, None] == rows[None, :]
        weights = 1.0 / same.sum(1, dtype=torch.float32)
        first = same.int().argmax(1)  # each member's first occurrence: whose dropout draw it uses
        hidden = linear(features).float()
        distinct = weights.sum()
        mean = (weights[:, None] * hidden).sum(0) / distinct
        variance = (weights[:, None] * (hidden - mean).square()).sum(0) / distinct
        if norm.track_running_stats:
            with torch.no_grad():  # as BatchNorm1d does: the unbiased variance over the distinct rows
                norm.running_mean.lerp_(mean, norm.momentum)
                norm.running_var.lerp_(variance * distinct / (distinct - 1), norm.momentum)
                norm.num_batches_tracked.add_(1)
        hidden = (hidden - mean) * torch.rsqrt(variance + norm.eps) * norm.weight + norm.bias
        if dropout.p > 0:
            keep = torch.rand_like(hidden)[first] >= dropout.p
            hidden = hidden * keep / (1 - dropout.p)
        return out(hidden)
