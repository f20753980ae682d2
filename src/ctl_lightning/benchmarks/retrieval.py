"""Retrieval: the exact engine against faiss IndexFlatIP and the memory-bandwidth bound.

A single query is memory-bound: it must read every vector of the rows it scans once. The bound is
the cheapest full read of those same rows (a float32 sum of the block with all threads), timed in
alternating runs with the single query, so that both meet the same load on a shared host: a bound
derived from a bandwidth measured minutes earlier moved from 23 to 50 GB/s between runs on the AMD
host (NOTES.md). That bandwidth is still measured and reported. A batch of queries is
compute-bound and is compared with faiss. The
exact engine scores a single query with its scan; the matrix product it used before (torch's GEMV,
which MKL runs on its generic code path on non-Intel CPUs) is timed beside it, on the same queries.
"""

from __future__ import annotations

import numpy as np
import torch

from ctl_lightning.retrieval.index import ExactIndex, FaissIndex
from ctl_lightning.timing import measure, measure_interleaved

DIM = 128


def recall_at_k(found, truth, k: int = 10) -> float:
    """Mean share of each query's true top-``k`` rows (``truth``) that were ``found``."""
    return float(np.mean([len(set(np.asarray(f).tolist()) & set(np.asarray(t).tolist())) / k for f, t in zip(found, truth)]))


def streaming_bandwidth(n_bytes: int = 1 << 30, repeats: int = 5) -> dict:
    """Bytes per second of one full read (a sum) over a ``n_bytes`` float32 array, across all threads."""
    array = torch.ones(n_bytes // 4, dtype=torch.float32)
    timing = measure(lambda: array.sum(), repeats=repeats)
    return {"bytes": n_bytes, "gb_per_s": n_bytes / timing["median_s"] / 1e9, **timing}


def _catalog(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 1 << 18):
        chunk = rng.standard_normal((min(1 << 18, n - start), DIM), dtype=np.float32)
        vectors[start : start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return vectors, np.zeros(n, dtype=np.int64)


def bench_catalog(n: int, bandwidth_gbs: float, repeats: int, batch: int = 256) -> dict:
    vectors, categories = _catalog(n)
    rng = np.random.default_rng(1)
    single = rng.standard_normal((1, DIM), dtype=np.float32)
    queries = rng.standard_normal((batch, DIM), dtype=np.float32)
    exact, flat = ExactIndex(vectors, categories), FaissIndex(vectors, categories)
    half = ExactIndex(vectors, categories, dtype="float16")
    product = ExactIndex(vectors, categories, scan_queries=0)  # the engine before the scan
    for index in (exact, flat, half, product):  # build the blocks / indexes outside the timed region
        index.search(single, 10, "0")
    block = exact._block("0")
    paired = measure_interleaved({"exact": lambda: exact.search(single, 10, "0"), "read": block.sum}, repeats=3 * repeats)
    bound_s = paired["read"]["median_s"]
    out = {
        "rows": n,
        "bytes_scanned": n * DIM * 4,
        "bound_single_s": bound_s,
        "bound_read": paired["read"],
        "bound_from_bandwidth_s": n * DIM * 4 / (bandwidth_gbs * 1e9),
        "exact_single": paired["exact"],
    }
    for name, index in (("faiss_flat", flat), ("exact_float16", half)):  # the exact engine's is paired above
        out[f"{name}_single"] = measure(lambda index=index: index.search(single, 10, "0"), repeats=repeats)
    for name, index in (("exact", exact), ("faiss_flat", flat), ("exact_float16", half)):
        out[f"{name}_batch{batch}"] = measure(lambda index=index: index.search(queries, 10, "0"), repeats=max(2, repeats // 2))
    out["exact_product_single"] = measure(lambda: product.search(single, 10, "0"), repeats=repeats)
    out["exact_single_vs_bound"] = out["exact_single"]["median_s"] / bound_s
    out["exact_product_single_vs_bound"] = out["exact_product_single"]["median_s"] / bound_s
    out["exact_product_over_scan"] = out["exact_product_single"]["median_s"] / out["exact_single"]["median_s"]
    same = [_same_answer(exact.search(q, 10, "0"), product.search(q, 10, "0")) for q in queries[:32]]
    out["scan_identical_top10_share"] = float(np.mean(same))
    out["exact_float16_single_vs_float32_bound"] = out["exact_float16_single"]["median_s"] / bound_s
    out["faiss_batch_over_exact_batch"] = out[f"faiss_flat_batch{batch}"]["median_s"] / out[f"exact_batch{batch}"]["median_s"]
    full = exact.search(queries, 10, "0")[1]
    reduced = half.search(queries, 10, "0")[1]
    out["float16_recall_at_10"] = recall_at_k(reduced, full)
    via_faiss = flat.search(queries, 10, "0")[1]
    out["faiss_identical_top10_share"] = float(np.mean([np.array_equal(a, b) for a, b in zip(full, via_faiss)]))
    out["faiss_top10_overlap"] = recall_at_k(via_faiss, full)
    return out


def _same_answer(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    """The same rows in the same order, and scores equal to float rounding."""
    return bool(np.array_equal(a[1], b[1]) and np.allclose(a[0], b[0], rtol=0, atol=1e-5))


def run(sizes: tuple[int, ...], repeats: int) -> dict:
    bandwidth = streaming_bandwidth()
    return {"bandwidth": bandwidth, "catalogs": [bench_catalog(n, bandwidth["gb_per_s"], repeats) for n in sizes]}
