"""Similar and complementary recommendations from a run's two catalogs.

* similar: nearest neighbours in the ``similar`` catalog, within the query's category, without the
  query itself or exact duplicates of it;
* complementary: nearest neighbours in the ``compatible`` catalog, in the other categories; by
  default the best item of each other category, then the best ``k`` categories (as the seed did).
  A type-aware catalog searches each other category in the subspace of the pair (query category,
  that category); it keeps that category's mapped vectors for later queries of the query's category.

The index kind (exact by default, or an approximate ``ivf`` or ``hnsw``) is chosen with
:class:`~ctl_lightning.retrieval.index.IndexSettings`; approximate indexes are saved in each catalog's
``index/`` folder (the pair subspaces' under ``index/<kind>-pairs/<query category>/``) and loaded from
there next time.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ctl_lightning.errors import CtlError
from ctl_lightning.retrieval.ann import summary
from ctl_lightning.retrieval.ann_store import partition_dir
from ctl_lightning.retrieval.catalog import Catalog
from ctl_lightning.retrieval.embedder import (
    ImageEmbedder,
    checked_checkpoint,
    open_image,
)
from ctl_lightning.retrieval.index import ExactIndex, IndexSettings, make_index

# Cosine at or above this is treated as the same image (an exact duplicate of the query).
DUPLICATE_COSINE = 1.0 - 1e-5


@dataclass
class Query:
    """What is being recommended for: a catalog product, or an outside image embedded by the model."""

    similar: np.ndarray  # [D_similar], L2-normalized
    compatible: np.ndarray  # [D_compatible], L2-normalized
    category: str
    row_id: int | None = None
    key: str | None = None
    image: str | None = None
    box: tuple[float, float, float, float] | None = None
    inferred_category: dict | None = None  # {"category", "confidence"} when not given by the user

    def describe(self) -> dict:
        out = {"category": self.category, "row_id": self.row_id, "key": self.key, "image": self.image, "box": self.box}
        if self.inferred_category is not None:
            out["inferred_category"] = self.inferred_category
        return out


@dataclass
class Recommendation:
    mode: str  # similar / complementary
    query: dict
    items: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


class Recommender:
    """Both catalogs of a run, loaded once (memory-mapped) with their per-category indexes."""

    def __init__(
        self, catalog_dir: str | Path, index: IndexSettings | str = "exact", dtype: str = "float32", data_root: str | Path | None = None
    ):
        """``index``: the index kind, at its default settings, or :class:`IndexSettings`;
        ``data_root``: where the dataset the catalog was made from is now, if it moved."""
        catalog_dir = Path(catalog_dir)
        if (catalog_dir / "catalogs").is_dir():
            catalog_dir = catalog_dir / "catalogs"
        if not catalog_dir.is_dir():
            raise CtlError(f"{catalog_dir}: no such catalog folder; pass a run directory written by train.py or eval.py")
        self.dir = catalog_dir
        self.similar = Catalog.load(catalog_dir / "similar")
        self.compatible = Catalog.load(catalog_dir / "compatible")
        if not np.array_equal(self.similar.row_ids, self.compatible.row_ids) or (
            self.similar.manifest["model"]["state_fingerprint"] != self.compatible.manifest["model"]["state_fingerprint"]
        ):
            raise CtlError(f"{catalog_dir}: the similar and compatible catalogs come from different runs or data")
        categories = self.similar.table.categories
        self.data_root = Path(data_root) if data_root else None
        self.index_settings = IndexSettings(index) if isinstance(index, str) else index
        self.dtype = dtype
        # (query category, target category) -> index over the target's items in the pair's subspace, their positions
        self._pair_indexes: dict[tuple[str, str], tuple[ExactIndex, np.ndarray]] = {}
        self._embedder: ImageEmbedder | None = None
        self._model_checked = False
        kind = self.index_settings.kind
        self.index = {
            name: make_index(self.index_settings, catalog.embeddings, categories, dtype, catalog.path / "index" / kind)
            for name, catalog in (("similar", self.similar), ("compatible", self.compatible))
        }

    def index_description(self) -> dict:
        """The index kind and its settings, as recorded beside recommendations; for ``auto``, also the
        engine each catalog's index kept and the single-query times that chose it."""
        described = self.index_settings.describe()
        if self.index_settings.kind == "auto":
            described["chosen"] = {name: index.auto_choice for name, index in self.index.items()}
        return described

    def index_summary(self) -> str | None:
        """What the approximate indexes did so far (loaded, built, searched exactly), or ``None`` for an exact kind."""
        return summary([*self.index.values(), *(index for index, _positions in self._pair_indexes.values())])

    @property
    def table(self):
        return self.similar.table

    def __len__(self) -> int:
        return len(self.similar)

    def store_path(self) -> Path | None:
        """The product store the catalogs were made from: where the manifest says (relative to the
        run), or at the same place under ``data_root`` when the dataset has moved."""
        data = self.similar.manifest["data"]
        store, root = self.similar.resolve(data.get("store")), self.similar.resolve(data.get("root"))
        if self.data_root is None or store is None:
            return store
        return self.data_root / (os.path.relpath(store, root) if root is not None else store.name)

    def check_model(self) -> None:
        """The checkpoint that made the catalogs, if it is still there, must hold the same weights:
        a catalog left behind by retraining is an error, for product and image queries alike. A
        product query needs no model, so a catalog copied without its checkpoint still serves."""
        if not self._model_checked:
            path = self.compatible.resolve(self.compatible.manifest["model"].get("checkpoint"))
            if path is not None and path.is_file():
                checked_checkpoint(self.compatible, path)
            self._model_checked = True

    def position(self, product: str | int) -> int:
        """Catalog position of a product given by row id or by product key."""
        text = str(product).strip()
        position = self.similar.position_of(int(text)) if text.isdigit() else self.table.row_of(text)
        if position is None:
            raise CtlError(f"unknown product {product!r}: give a row id of the catalog or a product key (signature@x,y,w,h)")
        return position

    def product_query(self, product: str | int) -> Query:
        self.check_model()
        p = self.position(product)
        spec = self.table.spec(p)
        return Query(
            similar=np.asarray(self.similar.embeddings[p]),
            compatible=np.asarray(self.compatible.embeddings[p]),
            category=spec.category,
            row_id=int(self.similar.row_ids[p]),
            key=spec.key,
            image=spec.image_path,
            box=spec.box,
        )

    def image_query(self, image: str | Path, category: str | None = None, box=None) -> Query:
        """A query from an outside image, embedded by the catalog's own model.

        Without ``category`` the category is inferred by a nearest-neighbour vote over the similar
        catalog, and the query reports it with its confidence.
        """
        similar, compatible = self.embedder().embed(open_image(image), box)
        return self.embedded_query(similar, compatible, category, str(image), box)

    def embedder(self) -> ImageEmbedder:
        """The catalog's own model (loaded on first use), checked against the catalog's fingerprint."""
        if self._embedder is None:
            self._embedder = ImageEmbedder.from_catalog(self.compatible)
            self._model_checked = True
        return self._embedder

    def embedded_query(self, similar: np.ndarray, compatible: np.ndarray, category: str | None, image: str, box=None) -> Query:
        """A query from an image already embedded by :meth:`embedder` (``image``: what to call it)."""
        inferred = None
        if category is None:
            inferred = self.infer_category(similar)
            category = inferred["category"]
        else:
            self.index["similar"].require(category)
        return Query(similar, compatible, category, image=image, box=box, inferred_category=inferred)

    def item(self, position: int, score: float, rank: int) -> dict:
        spec = self.table.spec(position)
        return {
            "rank": rank,
            "row_id": int(self.similar.row_ids[position]),
            "key": spec.key,
            "category": spec.category,
            "score": round(float(score), 6),
            "image": spec.image_path,
            "box": spec.box,
            "group": spec.group,
        }

    def _check_k(self, k: int) -> None:
        if k <= 0:
            raise CtlError(f"k must be a positive number of recommendations, got {k}")

    def recommend_similar(self, query: Query, k: int = 5) -> Recommendation:
        self._check_k(k)
        index: ExactIndex = self.index["similar"]
        scores, positions = index.search(query.similar[None], k + 8, query.category)
        items = []
        for score, position in zip(scores[0], positions[0]):
            if query.row_id is not None and int(self.similar.row_ids[position]) == query.row_id:
                continue
            if score >= DUPLICATE_COSINE:
                continue
            items.append(self.item(position, score, len(items) + 1))
            if len(items) == k:
                break
        return Recommendation("similar", query.describe(), items)

    def recommend_complementary(self, query: Query, k: int = 5, per_category: int = 1) -> Recommendation:
        """``per_category=n``: at most n items of each other category; ``0``: a plain top-k across them."""
        self._check_k(k)
        if per_category < 0:
            raise CtlError(f"per-category must be 0 (no limit) or positive, got {per_category}")
        index: ExactIndex = self.index["compatible"]
        others = [c for c in index.partitions if c != query.category]
        if not others:
            raise CtlError(f"the catalog has no category other than {query.category!r}")
        take = per_category or k
        found = []
        for category in others:
            scores, positions = self._complementary_search(query, take, category)
            found += list(zip(scores[0], positions[0]))
        found.sort(key=lambda pair: -pair[0])
        items = [self.item(position, score, rank + 1) for rank, (score, position) in enumerate(found[:k])]
        return Recommendation("complementary", query.describe(), items)

    def _complementary_search(self, query: Query, k: int, category: str) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` items of ``category`` for the query: in the compatible catalog's one space, or
        in the subspace of the pair (query's category, ``category``) of a type-aware catalog."""
        subspaces = self.compatible.subspaces
        if subspaces is None or not subspaces.has(query.category, category):
            return self.index["compatible"].search(query.compatible[None], k, category)
        key = (query.category, category)
        if key not in self._pair_indexes:
            positions = np.flatnonzero(self.table.categories == category)
            mapped = subspaces.project(self.compatible.embeddings[positions], *key)
            folder = partition_dir(self.compatible.path / "index" / f"{self.index_settings.kind}-pairs", query.category)
            self._pair_indexes[key] = (
                make_index(self.index_settings, mapped, self.table.categories[positions], self.dtype, folder),
                positions,
            )
        index, positions = self._pair_indexes[key]
        scores, found = index.search(subspaces.project(query.compatible[None], *key), k, category)
        return scores, positions[found]

    def infer_category(self, similar_vector: np.ndarray, k: int = 15) -> dict:
        """k-nearest-neighbour vote (weighted by cosine) over the similar catalog, all categories."""
        index: ExactIndex = self.index["similar"]
        candidates = []
        for category in index.partitions:
            scores, _positions = index.search(similar_vector[None], k, category)
            candidates += [(float(s), category) for s in scores[0]]
        candidates.sort(key=lambda pair: -pair[0])
        votes: dict[str, float] = {}
        for score, category in candidates[:k]:
            votes[category] = votes.get(category, 0.0) + max(score, 0.0)
        best = max(votes, key=votes.get)
        total = sum(votes.values()) or 1.0
        return {"category": best, "confidence": round(votes[best] / total, 4), "votes": {c: round(v / total, 4) for c, v in votes.items()}}
