"""The type-aware compatibility model (Vasileva et al., ECCV 2018): the same backbone and head, whose
output is a general embedding, plus a subspace per category pair (:mod:`ctl_lightning.models.subspaces`).

Only where pairs are measured changes: the loss and the triplet accuracy of each batch, the test
metrics and the complementary catalog use the subspace of each pair's two categories. The feature
cache, trainable stages, checkpoints and the similar-products embedding are those of
:class:`CompatibilityModule`. Categories come from the dataset (``model.categories`` is filled in at
run time and kept in the checkpoint's config); training batches carry each product's index in
that list (``batch["categories"]``, see :class:`~ctl_lightning.data.batches.TripletCollate`).
"""

from __future__ import annotations

import torch

from ctl_lightning.errors import CtlError
from ctl_lightning.evaluation.metrics import triplet_wins
from ctl_lightning.models.module import CompatibilityModule
from ctl_lightning.models.subspaces import CategorySubspaces


class TypeAwareModule(CompatibilityModule):
    def __init__(self, loss, optimizer, categories: list[str], subspaces: str = "learned", **kwargs):
        if kwargs.get("steps_per_call") is not None:
            raise CtlError("model.steps_per_call is the plain head's fixed-shape step; model=type_aware needs model.steps_per_call=null")
        super().__init__(loss, optimizer, **kwargs)
        self.subspaces = CategorySubspaces(list(categories), self.head.embedding_dim, subspaces)

    def batch_categories(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["categories"].to(self.device)

    def loss_value(self, embeddings: torch.Tensor, batch: dict[str, torch.Tensor], triplets: torch.Tensor) -> torch.Tensor:
        return self.loss(embeddings, batch["labels"], triplets, self.batch_categories(batch), self.subspaces)

    def batch_triplet_wins(self, embeddings: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        anchors, positives, negatives = batch["triplets"].unbind(1)
        categories = self.batch_categories(batch)
        pairs = self.subspaces.pair_ids(categories[anchors], categories[positives])
        return triplet_wins(embeddings, anchors, positives, negatives, self.subspaces, pairs)

    def pair_subspaces(self) -> CategorySubspaces:
        return self.subspaces
