"""Top-k search over a catalog, one partition per category.

Recommendations always search within categories (similar: the query's own; complementary: each of
the others), so the catalog is split once into contiguous per-category blocks. The exact engine scores
a block with one matrix product; the faiss engine (``faiss-cpu``, optional) holds one flat
inner-product index per block and returns the same top-k.
"""

from __future__ import annotations

import numpy as np
import torch

from ctl_lightning.errors import CtlError

ENGINES = ("exact", "faiss")


class ExactIndex:
    """Exact inner-product top-k by batched matrix products over per-category blocks.

    ``dtype=float16`` halves the memory (and the bytes a query reads) at a small cost in recall.
    """

    def __init__(self, embeddings: np.ndarray, categories: np.ndarray, dtype: str = "float32"):
        if dtype not in ("float32", "float16"):
            raise CtlError(f"index dtype must be float32 or float16, got {dtype!r}")
        self.dtype = np.dtype(dtype)
        self.categories = np.asarray(categories)
        self._positions = {str(c): np.flatnonzero(self.categories == c) for c in np.unique(self.categories)}
        self._embeddings = embeddings
        self._blocks: dict[str, torch.Tensor] = {}

    @property
    def partitions(self) -> list[str]:
        return sorted(self._positions)

    def require(self, category: str) -> None:
        """A one-line error when ``category`` has no items here, naming the categories there are."""
        if category not in self._positions:
            raise CtlError(f"category {category!r} has no items in this catalog; it has {', '.join(self.partitions)}")

    def warm(self) -> None:
        """Build every category's block (and faiss index) now, not on its first query."""
        for category in self.partitions:
            self.search(np.zeros((1, self._embeddings.shape[1]), np.float32), 1, category)

    def size(self, category: str) -> int:
        return len(self._positions.get(category, ()))

    def _block(self, category: str) -> torch.Tensor:
        if category not in self._blocks:
            rows = self._positions[category]
            self._blocks[category] = torch.from_numpy(np.ascontiguousarray(self._embeddings[rows], dtype=self.dtype))
        return self._blocks[category]

    def _scores(self, queries: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        # float16 blocks are multiplied natively (the CPU's half-precision GEMM accumulates in float32);
        # widening the block to float32 first would cost more than the bytes it saves.
        return (queries.to(block.dtype) @ block.T).float()

    def search(self, queries: np.ndarray, k: int, category: str) -> tuple[np.ndarray, np.ndarray]:
        """Scores and catalog positions ``[Q, min(k, n)]`` of the best matches in ``category``."""
        self.require(category)
        q = np.array(queries, dtype=np.float32).reshape(-1, queries.shape[-1])  # a writable copy
        scores, local = self._top(q, min(k, self.size(category)), category)
        return scores, self._positions[category][local]

    def _top(self, queries: np.ndarray, k: int, category: str) -> tuple[np.ndarray, np.ndarray]:
        top = torch.topk(self._scores(torch.from_numpy(queries), self._block(category)), k, dim=1)
        return top.values.numpy(), top.indices.numpy()


class FaissIndex(ExactIndex):
    """The same search through one faiss ``IndexFlatIP`` per category (exact, like the engine above)."""

    def __init__(self, embeddings: np.ndarray, categories: np.ndarray, dtype: str = "float32"):
        try:
            import faiss
        except ImportError as error:
            raise CtlError("the faiss engine needs faiss-cpu: `pip install faiss-cpu`, or use the exact engine") from error
        super().__init__(embeddings, categories, "float32")
        self._faiss = faiss
        self._indexes: dict[str, object] = {}

    def _index(self, category: str):
        if category not in self._indexes:
            block = self._block(category).numpy()
            index = self._faiss.IndexFlatIP(block.shape[1])
            index.add(block)
            self._indexes[category] = index
        return self._indexes[category]

    def _top(self, queries: np.ndarray, k: int, category: str) -> tuple[np.ndarray, np.ndarray]:
        return self._index(category).search(queries, k)


def make_index(engine: str, embeddings: np.ndarray, categories: np.ndarray, dtype: str = "float32") -> ExactIndex:
    if engine == "exact":
        return ExactIndex(embeddings, categories, dtype)
    if engine == "faiss":
        return FaissIndex(embeddings, categories, dtype)
    raise CtlError(f"unknown search engine {engine!r}; choose one of {', '.join(ENGINES)}")
