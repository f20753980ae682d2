"""Per category-pair subspaces of a general embedding (Vasileva et al., ECCV 2018).

One embedding space makes compatibility transitive: if a top suits both a pair of shoes and a bag, the
shoes and the bag are pulled together too, whether or not they suit each other. A type-aware model
keeps one general embedding per product and measures every item pair in the subspace of its two
categories, so the relation of tops to coats can differ from that of shoes to bags.

A pair's subspace is a linear map of the general embedding, then L2 normalization (the released
model's ``--l2_embed``):

* ``fixed``: disjoint 0/1 masks, ``embedding_dim // pairs`` dimensions each (at least two), never trained;
* ``learned``: a non-negative mask per pair (ReLU of a free vector), kept sparse by an L1 penalty;
* ``projection``: a full ``D x D`` matrix per pair, starting at the identity (the general space).

None has a bias, so a pair's subspace embedding of a vector does not depend on its length: catalogs
store unit-length general embeddings and the maps alone (:meth:`CategorySubspaces.matrices`).
Pairs are unordered and include a category with itself (an outfit may hold two pieces of jewellery);
a category the model was not built with has no subspace, and its pairs use the general embedding.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctl_lightning.errors import CtlError

SUBSPACE_KINDS = ("fixed", "learned", "projection")
# Dimensions each fixed mask needs: a normalised one-dimensional embedding is a sign, so every distance
# in that subspace is 0 or 2 and rankings tie (held-out triplet accuracy 0.20, ties counting as losses,
# with 91 pairs in 128 dimensions on the benchmark world: experiments/compatibility.md).
FIXED_MIN_WIDTH = 2
# The reference implementation's initialization of learned masks: mostly open, some closed by the ReLU.
LEARNED_MASK_INIT = (0.9, 0.7)


def category_pairs(categories: list[str]) -> list[tuple[str, str]]:
    """Every unordered pair of ``categories``, a category with itself included, in a fixed order."""
    return list(itertools.combinations_with_replacement(categories, 2))


class CategorySubspaces(nn.Module):
    """The subspaces of every unordered pair of ``categories`` of a ``dim``-dimensional embedding."""

    def __init__(self, categories: list[str], dim: int, kind: str = "learned"):
        super().__init__()
        if kind not in SUBSPACE_KINDS:
            raise CtlError(f"model.subspaces must be one of {', '.join(SUBSPACE_KINDS)}, got {kind!r}")
        if len(set(categories)) != len(categories) or not categories:
            raise CtlError(f"model.categories must be distinct category names, got {categories!r}")
        self.kind = kind
        self.categories = list(categories)
        self.pairs = category_pairs(self.categories)
        self._category_id = {name: i for i, name in enumerate(self.categories)}
        table = torch.empty(len(categories), len(categories), dtype=torch.long)
        for index, (a, b) in enumerate(self.pairs):
            i, j = self._category_id[a], self._category_id[b]
            table[i, j] = table[j, i] = index
        self.register_buffer("pair_table", table, persistent=False)  # derived from the categories
        count = len(self.pairs)
        if kind == "fixed":
            width = dim // count
            if width < FIXED_MIN_WIDTH:
                raise CtlError(
                    f"model.subspaces=fixed needs model.embedding_dim >= {FIXED_MIN_WIDTH * count} ({FIXED_MIN_WIDTH} dimensions "
                    f"for each of the {count} category pairs), got {dim}; raise it or use model.subspaces=learned"
                )
            masks = torch.zeros(count, dim)
            for index in range(count):
                masks[index, index * width : (index + 1) * width] = 1.0
            self.register_buffer("weight", masks, persistent=False)
        elif kind == "learned":
            self.weight = nn.Parameter(torch.empty(count, dim).normal_(*LEARNED_MASK_INIT))
        else:
            self.weight = nn.Parameter(torch.eye(dim).repeat(count, 1, 1))

    def category_ids(self, names) -> torch.Tensor:
        """``[N]`` index of each category name in :attr:`categories`; -1 for a category it does not know."""
        return torch.as_tensor(np.fromiter((self._category_id.get(str(n), -1) for n in names), dtype=np.int64, count=len(names)))

    def pair_ids(self, category_a: torch.Tensor, category_b: torch.Tensor) -> torch.Tensor:
        """Subspace index of each pair of category ids; -1 where either category is unknown."""
        known = (category_a >= 0) & (category_b >= 0)
        table = self.pair_table.to(category_a.device)
        return torch.where(known, table[category_a.clamp(min=0), category_b.clamp(min=0)], -1)

    def masks(self) -> torch.Tensor:
        """``[P, D]``: the masks of the mask kinds (learned ones through a ReLU, so they stay >= 0)."""
        return F.relu(self.weight) if self.kind == "learned" else self.weight

    def forward(self, embeddings: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """``embeddings [N, D]`` mapped into the subspace of ``pairs [N]`` and L2-normalized (pair -1:
        the general embedding, normalized)."""
        embeddings = embeddings.float()
        known = pairs >= 0
        if self.kind != "projection":
            mapped = embeddings * self.masks()[pairs.clamp(min=0)]
        else:  # one matrix product per pair present: gathering N matrices of D x D would not fit
            mapped = embeddings.clone()
            for pair in pairs[known].unique().tolist():
                chosen = pairs == pair
                mapped[chosen] = (embeddings[chosen] @ self.weight[pair].T).to(mapped.dtype)  # bf16 under autocast
        return F.normalize(torch.where(known[:, None], mapped, embeddings), dim=1)

    def l1(self, pairs: torch.Tensor) -> torch.Tensor:
        """Mean L1 norm of the learned weights of ``pairs``' subspaces (the paper's mask regulariser);
        0 for fixed masks, which do not learn."""
        if not self.weight.requires_grad:
            return self.weight.new_zeros(())
        weights = self.masks()[pairs[pairs >= 0]]
        return weights.abs().flatten(1).sum(1).mean() if len(weights) else self.weight.new_zeros(())

    @torch.no_grad()
    def matrices(self) -> torch.Tensor:
        """``[P, D, D]``: each pair's linear map (a mask as a diagonal matrix), what a catalog stores."""
        return self.weight.detach().clone() if self.kind == "projection" else torch.diag_embed(self.masks().detach())
