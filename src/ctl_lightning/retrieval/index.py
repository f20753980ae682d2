"""Top-k search over a catalog, one partition per category.

Recommendations always search within categories (similar: the query's own; complementary: each of
the others), so the catalog is split once into contiguous per-category blocks. The exact engine scores
a block with one matrix product, or a single query with a scan (below); the faiss engine
(``faiss-cpu``) holds one flat inner-product index per block and returns the same top-k. The
approximate kinds, ``ivf`` and ``hnsw`` (:mod:`ctl_lightning.retrieval.ann`), trade a little recall
for reading a few thousand vectors per query instead of the whole block. ``auto`` times the two
exact engines once on the catalog at hand and keeps the faster (:func:`fastest_exact`): which one
wins depends on the CPU and its BLAS, not on the code. :class:`IndexSettings` names the kind and its
settings; :func:`make_index` builds it.

A single query against a float32 block is a matrix-vector product, bound by the memory it reads.
torch hands it to MKL, whose ``sgemv`` takes its generic code path on non-Intel CPUs
(``mkl_blas_def_xsgemv`` on AMD EPYC: 3 to 4 times the memory bound, experiments/benchmarks/NOTES.md).
numpy's ``einsum`` has its own SIMD loop, chosen by the CPU's features (AVX2, AVX-512) rather than
its vendor, and faiss's ``fvec_inner_products_ny`` a faster one (0.71x of einsum's time on the AMD
host, NOTES.md); so up to ``SCAN_QUERIES`` queries are scored by that scan (faiss's kernel, einsum
where faiss is missing), one query at a time, over slices of the block in parallel threads (both
release the GIL).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from ctl_lightning.errors import CtlError
from ctl_lightning.timing import measure_interleaved

EXACT_KINDS = (
    "exact",
    "faiss",
    "auto",
)  # every top-k exact: one scan (or matrix product) per block, faiss's IndexFlatIP, or the faster of the two
APPROXIMATE_KINDS = ("ivf", "hnsw")
INDEX_KINDS = EXACT_KINDS + APPROXIMATE_KINDS
# Query counts scored by the scan. Each query reads the block once, where a matrix product reads it
# once for all of them, so the scan is sure to win for one query only.
SCAN_QUERIES = 1
# Rows a thread scans at least: blocks under two slices (32,768 rows) stay in the calling thread. With
# faiss's kernel two halves took 0.70x to 0.81x of one thread's time for blocks of 32,768 to 200,000
# rows on the AMD host, and 1.26x at 16,384, where the hand-off costs more than it saves (NOTES.md).
_SLICE_ROWS = 1 << 14
# (pid, pool, lock): a forked child starts its own; the lock is held by the scan using the pool.
_pool: tuple[int, ThreadPoolExecutor, threading.Lock] | None = None
# The settings of each approximate kind. Those that shape the built index are part of its saved
# fingerprint (changing one rebuilds it); the others only steer a search and apply to a saved index.
BUILD_SETTINGS = {"ivf": ("nlist",), "hnsw": ("m", "ef_construction")}
SEARCH_SETTINGS = {"ivf": ("nprobe",), "hnsw": ("ef_search",)}


@dataclass(frozen=True)
class IndexSettings:
    """The index kind a recommender searches with, and the settings of the approximate kinds.

    The defaults come from experiments/benchmarks/ANN.md (synthetic clustered catalogs, 2 cores). ivf
    probing 64 cells has recall@10 1.0 at 1M rows in under 1 ms a query, and 0.98 where a 50,000-row
    partition is nearly one continuous cloud (0.93 at 32 cells). hnsw needs ``ef_search`` 256 for 0.955
    at 1M rows (0.94 at 128), and takes 16 times longer than ivf to build: ivf is the one to use.
    """

    kind: str = "exact"  # exact, faiss, auto (all exact), ivf or hnsw
    exact_below: int = 50_000  # partitions with fewer rows are searched exactly: about 1.2 ms a query at 50,000, and never wrong
    nlist: int = 0  # ivf: k-means cells per partition; 0: a power of two near 2 * sqrt(rows)
    nprobe: int = 64  # ivf: the cells a query scans
    m: int = 32  # hnsw: links per node
    ef_construction: int = 80  # hnsw: candidates kept while a node is linked
    ef_search: int = 256  # hnsw: candidates a query keeps

    def __post_init__(self):
        if self.kind not in INDEX_KINDS:
            raise CtlError(f"unknown index {self.kind!r}; choose one of {', '.join(INDEX_KINDS)}")
        for name in (f.name for f in fields(self) if f.name != "kind"):
            value, least = getattr(self, name), 0 if name in ("exact_below", "nlist") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise CtlError(f"index setting {name} must be a whole number of at least {least}, got {value!r}")

    @classmethod
    def parse(cls, kind: str, params: list[str] | None) -> IndexSettings:
        """Settings from ``NAME=VALUE`` strings (the CLIs' ``--index-param``), each checked against the kind."""
        settings = cls(kind)
        names = settings.names()
        for param in params or ():
            name, sep, value = param.partition("=")
            if not names:
                raise CtlError(f"the {kind} index takes no settings, got {param!r}")
            if not sep or name.strip() not in names:
                raise CtlError(f"{param!r} is not NAME=VALUE with NAME one of the {kind} index's settings: {', '.join(names)}")
            try:
                number = int(value)
            except ValueError:
                raise CtlError(f"index setting {param!r}: {value!r} is not a whole number") from None
            settings = replace(settings, **{name.strip(): number})
        return settings

    @property
    def approximate(self) -> bool:
        return self.kind in APPROXIMATE_KINDS

    def names(self) -> tuple[str, ...]:
        """The settings that apply to this kind (none for the exact kinds)."""
        return ("exact_below", *BUILD_SETTINGS[self.kind], *SEARCH_SETTINGS[self.kind]) if self.approximate else ()

    def describe(self) -> dict:
        """The kind and the settings that apply to it, as recorded beside recommendations."""
        values = asdict(self)
        return {"kind": self.kind, **{name: values[name] for name in self.names()}}


def _threads() -> int:
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def _idle_pool(workers: int) -> tuple[ThreadPoolExecutor, threading.Lock] | None:
    """The scan's thread pool and its lock, now held, or None while another scan holds it: concurrent
    searches (a server's requests) then each scan in their own thread, rather than queue their slices
    behind another search's while the cores are busy anyway."""
    global _pool
    if _pool is None or _pool[0] != os.getpid() or _pool[1]._max_workers < workers:
        _pool = (os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix="ctl-scan"), threading.Lock())
    _, pool, lock = _pool
    return (pool, lock) if lock.acquire(blocking=False) else None


@functools.cache
def _row_products():
    """``f(block, query, out)``: ``out[i] = block[i] . query`` for C-contiguous float32 arrays, by
    faiss's SIMD kernel, or numpy's einsum where faiss does not import."""
    try:
        faiss = _load_faiss()
    except ImportError:
        return functools.partial(np.einsum, "ij,j->i")
    pointer = faiss.swig_ptr

    def products(block: np.ndarray, query: np.ndarray, out: np.ndarray) -> None:
        if len(block):
            faiss.fvec_inner_products_ny(pointer(out), pointer(query), pointer(block), block.shape[1], len(block))

    return products


def scan_scores(queries: np.ndarray, block: np.ndarray) -> np.ndarray:
    """``queries @ block.T`` for float32 arrays, one query at a time: ``[Q, N]`` float32.
    A large block is split into slices: the calling thread scans the first, the pool the others."""
    queries, block = np.ascontiguousarray(queries, dtype=np.float32), np.ascontiguousarray(block, dtype=np.float32)
    products = _row_products()
    out = np.empty((len(queries), len(block)), dtype=np.float32)
    slices = min(_threads(), len(block) // _SLICE_ROWS)
    (first, last), *others = itertools.pairwise(np.linspace(0, len(block), max(1, slices) + 1).astype(int))
    held = _idle_pool(len(others)) if others else None
    try:
        for query, row in zip(queries, out):
            if held is None:
                products(block, query, out=row)
                continue
            futures = [held[0].submit(products, block[a:b], query, out=row[a:b]) for a, b in others]
            try:
                products(block[first:last], query, out=row[first:last])
            finally:
                wait(futures)  # no slice is still writing into `out` when this returns or raises
            for future in futures:
                future.result()
    finally:
        if held is not None:
            held[1].release()
    return out


class ExactIndex:
    """Exact inner-product top-k by batched matrix products over per-category blocks.

    ``dtype=float16`` halves the memory (and the bytes a query reads) at a small cost in recall.
    ``scan_queries``: up to this many queries against a float32 block are scored by the scan
    (0: always the matrix product, the engine before the scan).
    """

    auto_choice: dict | None = None  # set by fastest_exact on the engine index=auto kept: why it won

    def __init__(self, embeddings: np.ndarray, categories: np.ndarray, dtype: str = "float32", scan_queries: int = SCAN_QUERIES):
        if dtype not in ("float32", "float16"):
            raise CtlError(f"index dtype must be float32 or float16, got {dtype!r}")
        self.dtype = np.dtype(dtype)
        self.scan_queries = scan_queries
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
        if block.dtype == torch.float32 and len(queries) <= self.scan_queries:
            return torch.from_numpy(scan_scores(queries.numpy(), block.numpy()))
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


def _load_faiss():
    """faiss, imported without its loader's INFO lines on which SIMD build it found: a training run's
    console shows INFO, and its recommendation examples search with the scan, which imports faiss."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


def import_faiss():
    """The faiss module, or a one-line error saying how to get it."""
    try:
        faiss = _load_faiss()
    except ImportError as error:
        raise CtlError("the faiss, ivf and hnsw indexes need faiss-cpu: `pip install faiss-cpu`, or use the exact index") from error
    return faiss


class FaissIndex(ExactIndex):
    """The same search through one faiss ``IndexFlatIP`` per category (exact, like the engine above)."""

    def __init__(self, embeddings: np.ndarray, categories: np.ndarray):
        super().__init__(embeddings, categories)
        self._faiss = import_faiss()
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


def make_index(
    settings: IndexSettings | str, embeddings: np.ndarray, categories: np.ndarray, dtype: str = "float32", folder: Path | None = None
) -> ExactIndex:
    """The index ``settings`` names (or the kind named, at its defaults) over ``embeddings``.

    ``folder``: where an approximate index saves its built partitions, to load them next time
    (``None``: built in memory only); the exact kinds build nothing worth saving.
    """
    settings = IndexSettings(settings) if isinstance(settings, str) else settings
    if settings.kind == "exact":
        return ExactIndex(embeddings, categories, dtype)
    if settings.kind == "auto":
        return fastest_exact(embeddings, categories, dtype)
    if dtype != "float32":  # faiss's indexes hold float32 only: say so rather than ignore the request
        raise CtlError(f"the {settings.kind} index stores float32 only, got dtype {dtype!r}; use the exact index for {dtype}")
    if settings.kind == "faiss":
        return FaissIndex(embeddings, categories)
    from ctl_lightning.retrieval.ann import ApproximateIndex  # here: ann builds on this module

    return ApproximateIndex(embeddings, categories, settings, folder)


def fastest_exact(embeddings: np.ndarray, categories: np.ndarray, dtype: str = "float32", rounds: int = 7, k: int = 10) -> ExactIndex:
    """The faster exact engine for this catalog: ``exact`` and, where faiss is installed and the
    catalog is float32 (faiss holds nothing else), ``faiss``,
    each timed on single queries (the serving case) against the largest category, in alternating
    rounds so that a change in the host's load falls on both. Building a block (or faiss index) is
    left out of the clock. The winner carries ``auto_choice``, recorded beside its results."""
    candidates = {"exact": ExactIndex(embeddings, categories, dtype)}
    if dtype == "float32":
        with contextlib.suppress(CtlError):  # faiss is not installed: the exact engine is the only candidate
            candidates["faiss"] = FaissIndex(embeddings, categories)
    largest = max(candidates["exact"].partitions, key=candidates["exact"].size)
    query = np.asarray(embeddings[np.flatnonzero(np.asarray(categories) == largest)[:1]], dtype=np.float32)
    # the warm-up call builds the block (and faiss's index) off the clock
    timings = measure_interleaved({name: functools.partial(index.search, query, k, largest) for name, index in candidates.items()}, rounds)
    median = {name: timing["median_s"] for name, timing in timings.items()}
    chosen = min(median, key=median.get)
    index = candidates[chosen]
    index.auto_choice = {
        "engine": chosen,
        "single_query_ms": {name: round(value * 1e3, 4) for name, value in median.items()},
        "category": largest,
        "rows": index.size(largest),
    }
    return index
