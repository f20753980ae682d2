"""Losses over the embeddings of one batch, in pytorch-metric-learning's calling convention.

Every loss is called as ``loss(embeddings, labels, triplets)``: ``embeddings [U, D]`` of the batch's
unique products, ``labels [U]`` their outfit class, ``triplets [B, 3]`` indices into ``embeddings``.
Triplet losses use the triplets, class losses (SoftTriple) the labels, so either can be swapped in
with ``loss=...`` and both are scored by the same metrics. Only training outfits have a class (label
>= 0), so a loss with ``uses_classes`` has no value on validation triplets. The type-aware loss also
takes each product's category and the model's subspaces (``model=type_aware``).

A triplet loss may carry a ``miner`` (:mod:`ctl_lightning.losses.mining`, ``loss.miner``): on
training batches the model replaces the batch's triplets by the ones the miner picks from the
embeddings, outfit labels and categories; validation always scores the sampled triplets.
"""

from ctl_lightning.losses.softtriple import SoftTripleLoss
from ctl_lightning.losses.triplet import TripletLoss
from ctl_lightning.losses.type_aware import TypeAwareTripletLoss

__all__ = ["SoftTripleLoss", "TripletLoss", "TypeAwareTripletLoss"]
