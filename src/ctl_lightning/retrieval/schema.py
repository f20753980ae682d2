"""The JSON schema of recommendations, written down once.

``ctl-recommend`` writes it as ``recommendations.json`` and ``ctl-serve`` answers with it (and serves
it as OpenAPI at ``/docs``). Both build it with :func:`recommendations_document` from a
:class:`~ctl_lightning.retrieval.recommend.Recommendation`, so the file and the API cannot drift apart.
A field the engine leaves out (``inferred_category`` of a query whose category was given) is left out
of the document too, not written as ``null``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Box = tuple[float, float, float, float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InferredCategory(_Strict):
    category: str
    confidence: float = Field(ge=0, le=1, description="the winner's share of the cosine-weighted vote")
    votes: dict[str, float] = Field(description="every voting category's share")


class QueryInfo(_Strict):
    """What was recommended for: a catalog product (``row_id`` and ``key``) or an outside image."""

    category: str
    row_id: int | None = None
    key: str | None = Field(None, description="signature@x,y,w,h of a catalog product")
    image: str | None = Field(None, description="the product's source image, or the query image's name")
    box: Box | None = Field(None, description="normalized x, y, w, h of the item in its image; null: the whole image")
    inferred_category: InferredCategory | None = Field(None, description="present when the category was inferred from the image")


class Item(_Strict):
    rank: int = Field(ge=1)
    row_id: int = Field(description="the product's row in the product store")
    key: str
    category: str
    score: float = Field(description="cosine similarity to the query (in a type-aware catalog: in the pair's subspace)")
    image: str
    box: Box | None
    group: str = Field(description="the outfit (CTL) or scene (STL) the product comes from")


class AutoChoice(_Strict):
    """What ``auto`` kept for one catalog, and why: the faster exact engine on single queries."""

    engine: Literal["exact", "faiss"]
    single_query_ms: dict[str, float] = Field(description="median time of one query per engine timed (faiss only where installed)")
    category: str = Field(description="the category timed: the catalog's largest")
    rows: int


class IndexInfo(_Strict):
    """The index that found the items: its kind and, for an approximate one, the settings it searched with."""

    kind: Literal["exact", "faiss", "auto", "ivf", "hnsw"] = Field(description="exact, faiss and auto are exact; ivf and hnsw approximate")
    chosen: dict[str, AutoChoice] | None = Field(None, description="auto: the engine each catalog (similar, compatible) kept")
    exact_below: int | None = Field(None, description="ivf, hnsw: partitions (categories) with fewer rows are searched exactly")
    nlist: int | None = Field(None, description="ivf: k-means cells per partition; 0: chosen from the partition's size")
    nprobe: int | None = Field(None, description="ivf: cells a query scans")
    m: int | None = Field(None, description="hnsw: links per node")
    ef_construction: int | None = Field(None, description="hnsw: candidates kept while a node was linked")
    ef_search: int | None = Field(None, description="hnsw: candidates a query keeps")


class Recommendations(_Strict):
    """``recommendations.json`` of ``ctl-recommend``, and the answer of every ``/v1`` query of ``ctl-serve``."""

    mode: Literal["similar", "complementary"]
    query: QueryInfo
    items: list[Item]
    catalog: str = Field(description="the catalogs folder the items come from")
    engine: str = Field(description="the index kind (as index.kind): exact, faiss, auto, ivf or hnsw")
    index: IndexInfo | None = Field(None, description="the index kind and its settings (absent from documents written before it)")


def recommendations_document(result, catalog: str, index: dict) -> Recommendations:
    """The document of a :class:`~ctl_lightning.retrieval.recommend.Recommendation` found by the
    index ``index`` describes (:meth:`~ctl_lightning.retrieval.index.IndexSettings.describe`), checked against the schema."""
    return Recommendations.model_validate({**result.to_json(), "catalog": catalog, "engine": index["kind"], "index": index})


def document_json(document: Recommendations) -> dict:
    """Plain JSON values; fields the engine did not set are left out."""
    return document.model_dump(mode="json", exclude_unset=True)
