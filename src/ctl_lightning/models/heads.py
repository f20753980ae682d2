"""The paper's embedding head: Linear -> BatchNorm1d -> Dropout -> Linear."""

from __future__ import annotations

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
