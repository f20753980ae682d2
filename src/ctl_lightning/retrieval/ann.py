"""Approximate top-k search: a faiss IVF or HNSW index per category partition, exact below a size.

Exact search reads every vector of a partition for every query: 5 GB at 10M rows of 128 float32,
about half a second here. An IVF index (IVF-Flat: k-means cells; a query scans the ``nprobe`` cells
nearest to it) or an HNSW graph (a greedy walk along neighbour links, ``ef_search`` candidates wide)
reads a few thousand vectors instead, for a small loss in recall (experiments/benchmarks/ANN.md).
Both keep the vectors themselves, so the scores they return are the exact cosines. A partition with
fewer than ``exact_below`` rows is searched exactly: at that size exact search is fast and never misses.

Building takes minutes at millions of rows, so each partition's index is built once and saved
beside the catalog (:mod:`ctl_lightning.retrieval.ann_store`) with the fingerprint of its vectors and
build settings; it is loaded while both match, and rebuilt, with a log line saying why, when either
changed. The search settings (``nprobe``, ``ef_search``) apply to a saved index as it is.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ctl_lightning.retrieval.ann_store import load_partition, partition_dir, rows_in_chunks, save_partition, vectors_digest
from ctl_lightning.retrieval.index import BUILD_SETTINGS, ExactIndex, IndexSettings, import_faiss

log = logging.getLogger(__name__)

MIN_PER_CELL = 39  # faiss's k-means warns with fewer training points per cell
TRAIN_PER_CELL = 64  # training points per IVF cell, sampled from the partition
TRAIN_SEED = 0


def auto_nlist(rows: int) -> int:
    """IVF cells for a partition of ``rows``: the power of two nearest to 2 * sqrt(rows), and at most
    one per ``MIN_PER_CELL`` rows. faiss suggests 4 to 16 * sqrt(rows); fewer, larger cells make
    k-means and adding (both proportional to the cells) affordable on a CPU at 10M rows, and a
    query's 64 probed cells read about 40 MB there (8192 cells of 1,220 rows on average)."""
    nearest = 2 ** round(math.log2(2 * math.sqrt(max(rows, 1))))
    return max(1, min(nearest, rows // MIN_PER_CELL))


def build_settings(settings: IndexSettings, rows: int) -> dict:
    """The settings that shape a partition's index, with ``nlist=0`` resolved for its size."""
    values = {name: getattr(settings, name) for name in BUILD_SETTINGS[settings.kind]}
    if settings.kind == "ivf":
        values["nlist"] = min(values["nlist"] or auto_nlist(rows), rows)
    return values


def build_partition(faiss, kind: str, build: dict, embeddings: np.ndarray, rows: np.ndarray):
    """A faiss index over ``embeddings[rows]`` (inner product), fed in chunks: memory holds the
    index, one chunk and, for IVF, the k-means sample."""
    dim = embeddings.shape[1]
    if kind == "ivf":
        index = faiss.index_factory(dim, f"IVF{build['nlist']},Flat", faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(TRAIN_SEED).choice(len(rows), min(len(rows), TRAIN_PER_CELL * build["nlist"]), replace=False)
        index.train(np.ascontiguousarray(embeddings[rows[np.sort(sample)]], dtype=np.float32))
    else:
        index = faiss.IndexHNSWFlat(dim, build["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = build["ef_construction"]
    for chunk in rows_in_chunks(embeddings, rows):
        index.add(chunk)
    return index


class ApproximateIndex(ExactIndex):
    """IVF or HNSW per category partition (exact below ``settings.exact_below`` rows), saved in
    ``folder`` (``None``: built in memory only).

    ``events`` says for each approximate partition whether its index was ``loaded``, ``built`` or
    ``rebuilt``; a partition's index is loaded or built on its first query (or :meth:`warm`).
    """

    def __init__(self, embeddings: np.ndarray, categories: np.ndarray, settings: IndexSettings, folder: Path | None = None):
        super().__init__(embeddings, categories)
        self.settings, self.folder = settings, folder
        self._faiss = import_faiss()
        self._indexes: dict[str, object] = {}
        self._building = threading.Lock()  # concurrent first queries of a partition build it once
        self.events: dict[str, str] = {}
        self.build_seconds = 0.0

    def approximate(self, category: str) -> bool:
        return self.size(category) >= self.settings.exact_below

    def _top(self, queries: np.ndarray, k: int, category: str) -> tuple[np.ndarray, np.ndarray]:
        if not self.approximate(category):
            return super()._top(queries, k, category)
        return self._search(self.partition_index(category), queries, k)

    def partition_index(self, category: str):
        """The faiss index of an approximate partition: loaded, or built, on first use."""
        if category not in self._indexes:
            with self._building:
                if category not in self._indexes:
                    self._indexes[category] = self._load_or_build(category)
        return self._indexes[category]

    def _search(self, index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's top-k. A query that finds fewer than k (IVF cells that hold fewer, or an HNSW walk
        that reaches fewer) is searched again twice as wide, up to exhaustively; a batch keeps the
        results every query found."""
        ivf = self.settings.kind == "ivf"
        width, widest = (self.settings.nprobe, index.nlist) if ivf else (self.settings.ef_search, index.ntotal)
        while True:
            width = min(width, widest)
            params = self._faiss.SearchParametersIVF(nprobe=width) if ivf else self._faiss.SearchParametersHNSW(efSearch=width)
            scores, local = index.search(queries, k, params=params)
            found = int((local >= 0).sum(axis=1).min())
            if found == k or width == widest:
                return scores[:, :found], local[:, :found]
            width *= 2

    def _load_or_build(self, category: str):
        rows, kind = self._positions[category], self.settings.kind
        identity = {
            "kind": kind,
            "build": build_settings(self.settings, len(rows)),
            "rows": len(rows),
            "dim": int(self._embeddings.shape[1]),
            "vectors": vectors_digest(self._embeddings, rows),
        }
        place = partition_dir(self.folder, category) if self.folder is not None else None
        why = None
        if place is not None:
            index, why = load_partition(place, identity, self._faiss)
            if index is not None:
                self.events[category] = "loaded"
                log.info(f"{place}: loaded the {kind} index of {category!r} ({len(rows):,} rows)")
                return index
            if why:
                log.warning(f"{place}: building the {kind} index of {category!r} again: {why}")
        start = time.perf_counter()
        index = build_partition(self._faiss, kind, identity["build"], self._embeddings, rows)
        seconds = time.perf_counter() - start
        self.build_seconds += seconds
        self.events[category] = "rebuilt" if why else "built"
        log.info(f"built the {kind} index of {category!r} ({len(rows):,} rows, {identity['build']}) in {seconds:.1f} s")
        if place is not None:
            save_partition(place, index, identity, self._faiss, seconds)
        return index


def summary(indexes: list[ExactIndex]) -> str | None:
    """One line on what the approximate ones among ``indexes`` did so far (``None`` if there are none):
    partitions loaded, built (and how long that took), and searched exactly for their size."""
    approximate = [index for index in indexes if isinstance(index, ApproximateIndex)]
    if not approximate:
        return None
    settings = approximate[0].settings
    events = Counter(event for index in approximate for event in index.events.values())
    done = ", ".join(f"{events[e]} {e}" for e in ("loaded", "built", "rebuilt") if events[e]) or "none searched yet"
    seconds = sum(index.build_seconds for index in approximate)
    exact = sum(not index.approximate(c) for index in approximate for c in index.partitions)
    took = f" (building took {seconds:.1f} s)" if seconds else ""
    return f"{settings.kind} index: partitions {done}{took}; {exact} partitions under {settings.exact_below:,} rows searched exactly"
