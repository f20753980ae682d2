"""The category-pair subspaces a type-aware catalog carries, as complementary search applies them.

A type-aware model's ``compatible`` catalog holds unit-length general embeddings plus
``subspaces.npy``: the linear map of every unordered category pair (``[P, D, D]``; a mask is stored
as a diagonal matrix). Its manifest lists the pairs in the file's order. Complementary search for a
query of category ``a`` among items of category ``b`` maps both sides through the ``(a, b)`` map
and ranks by cosine there, as the model was trained and tested. A pair the model has no subspace for
(a category it never saw) is searched in the general embedding. Similar products never use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SUBSPACES_FILE = "subspaces.npy"


@dataclass
class PairSubspaces:
    matrices: np.ndarray  # [P, D, D]: the map of pair i is matrices[i]
    pairs: list[tuple[str, str]]  # unordered category pairs, in the order of ``matrices``
    kind: str  # the model's model.subspaces: fixed, learned or projection
    _index: dict[tuple[str, str], int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.pairs = [(str(a), str(b)) for a, b in self.pairs]
        self._index = {}
        for i, (a, b) in enumerate(self.pairs):
            self._index[(a, b)] = self._index[(b, a)] = i

    def describe(self) -> dict:
        """What a catalog manifest says about them."""
        return {"kind": self.kind, "file": SUBSPACES_FILE, "pairs": [list(pair) for pair in self.pairs]}

    def has(self, category_a: str, category_b: str) -> bool:
        return (category_a, category_b) in self._index

    def project(self, vectors: np.ndarray, category_a: str, category_b: str) -> np.ndarray:
        """``vectors [N, D]`` in the subspace of the pair, L2-normalized (an all-zero image stays zero)."""
        mapped = np.asarray(vectors, dtype=np.float32) @ np.asarray(self.matrices[self._index[(category_a, category_b)]]).T
        norms = np.linalg.norm(mapped, axis=1, keepdims=True)
        return mapped / np.where(norms > 0, norms, 1.0)
