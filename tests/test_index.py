"""The exact engine's single-query scan returns what its matrix product returns (issue 15).

The matrix product (``scan_queries=0``) is the engine as it was before the scan; the scan must give
the same top-k rows in the same order, and the same scores up to float rounding.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from ctl_lightning.errors import CtlError
from ctl_lightning.retrieval import index as index_module
from ctl_lightning.retrieval.index import ExactIndex, make_index, scan_scores


def _catalog(rows: int, dim: int, seed: int, categories=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, rng.choice(list(categories), size=rows), rng


@pytest.mark.parametrize("dim", [64, 128, 1280])
def test_single_query_scan_returns_the_matrix_products_top_k(dim):
    vectors, categories, rng = _catalog(20_000, dim, seed=dim)
    scan, product = ExactIndex(vectors, categories), ExactIndex(vectors, categories, scan_queries=0)
    # Queries from the catalog (near duplicates, the app's case) and random directions.
    queries = np.concatenate([vectors[:20] + 0.05 * rng.normal(size=(20, dim)).astype(np.float32), rng.normal(size=(20, dim))])
    for category in ("a", "b", "c"):
        for query in queries.astype(np.float32):
            scan_scores_, scan_rows = scan.search(query, 10, category)
            product_scores, product_rows = product.search(query, 10, category)
            assert np.array_equal(scan_rows, product_rows)
            np.testing.assert_allclose(scan_scores_, product_scores, rtol=0, atol=1e-5)


def test_the_scan_splits_large_blocks_across_threads_without_changing_the_result(monkeypatch):
    monkeypatch.setattr(index_module, "_SLICE_ROWS", 1_000)
    monkeypatch.setattr(index_module, "_threads", lambda: 3)
    vectors, _, rng = _catalog(10_001, 32, seed=5)
    queries = rng.normal(size=(2, 32)).astype(np.float32)
    np.testing.assert_allclose(scan_scores(queries, vectors), queries @ vectors.T, rtol=0, atol=1e-5)
    one = np.ones((1, 32), dtype=np.float32)
    assert scan_scores(one, vectors[:3]).shape == (1, 3)


def test_a_scan_while_another_holds_the_pool_runs_in_its_own_thread(monkeypatch):
    """Concurrent searches (a server's requests) do not queue behind each other's slices: while one
    scan holds the pool, another scans its whole block in the calling thread, with the same scores."""
    monkeypatch.setattr(index_module, "_SLICE_ROWS", 1_000)
    monkeypatch.setattr(index_module, "_threads", lambda: 2)
    vectors, _, rng = _catalog(4_000, 16, seed=9)
    query = rng.normal(size=(1, 16)).astype(np.float32)
    expected = scan_scores(query, vectors)  # split: creates the pool, and releases it
    _, pool, lock = index_module._pool
    assert lock.acquire(blocking=False), "the first scan left the pool held"
    try:
        monkeypatch.setattr(pool, "submit", lambda *args, **kwargs: pytest.fail("a busy pool was used"))
        assert np.array_equal(scan_scores(query, vectors), expected)
    finally:
        lock.release()


def test_more_queries_than_the_scan_takes_use_the_matrix_product(monkeypatch):
    vectors, categories, rng = _catalog(3_000, 16, seed=7)
    calls = []
    monkeypatch.setattr(index_module, "scan_scores", lambda q, b: calls.append(len(q)) or q @ b.T)
    index = ExactIndex(vectors, categories)
    index.search(rng.normal(size=(1, 16)).astype(np.float32), 5, "a")
    index.search(rng.normal(size=(4, 16)).astype(np.float32), 5, "a")
    ExactIndex(vectors, categories, dtype="float16").search(rng.normal(size=(1, 16)).astype(np.float32), 5, "a")
    assert calls == [1]  # the batch of 4 and the float16 block went through the matrix product


def test_faiss_refuses_a_dtype_it_would_ignore():
    vectors, categories, _ = _catalog(100, 8, seed=0)
    with pytest.raises(CtlError, match="float32 only"):
        make_index("faiss", vectors, categories, "float16")


def test_auto_keeps_the_faster_exact_engine_and_says_why(monkeypatch):
    """``auto`` times both exact engines on the largest category and keeps the faster; its top-k is
    the exact engine's either way, and float16 (which faiss cannot hold) leaves exact the only one."""
    pytest.importorskip("faiss")
    vectors, categories, rng = _catalog(5_000, 32, seed=11, categories=("a", "b", "b", "c"))
    queries = rng.normal(size=(3, 32)).astype(np.float32)
    reference = ExactIndex(vectors, categories)
    for slower in ("exact", "faiss"):
        engine = index_module.ExactIndex if slower == "exact" else index_module.FaissIndex
        real_top = engine._top

        def slowed(self, *args, real_top=real_top, engine=engine):
            if type(self) is engine:  # FaissIndex subclasses ExactIndex: slow the named engine only
                time.sleep(0.005)
            return real_top(self, *args)

        monkeypatch.setattr(engine, "_top", slowed)
        index = make_index("auto", vectors, categories)
        monkeypatch.setattr(engine, "_top", real_top)
        kept = "faiss" if slower == "exact" else "exact"
        assert index.auto_choice["engine"] == kept and type(index).__name__ == {"exact": "ExactIndex", "faiss": "FaissIndex"}[kept]
        assert index.auto_choice["category"] == "b" and index.auto_choice["rows"] == index.size("b")
        times = index.auto_choice["single_query_ms"]
        assert set(times) == {"exact", "faiss"} and times[slower] >= 5 > times[kept]
        for category in ("a", "b", "c"):
            scores, rows = index.search(queries, 10, category)
            want_scores, want_rows = reference.search(queries, 10, category)
            assert np.array_equal(rows, want_rows)
            np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-5)
    half = make_index("auto", vectors, categories, "float16")
    assert half.auto_choice["engine"] == "exact" and set(half.auto_choice["single_query_ms"]) == {"exact"}


def test_the_scan_imports_faiss_without_its_loader_lines():
    """A training run's console shows INFO; its recommendation examples search with the scan, whose
    first call imports faiss, and faiss's loader must not add its lines about SIMD builds there."""
    code = (
        "import logging, numpy as np\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from ctl_lightning.retrieval.index import scan_scores\n"
        "print(scan_scores(np.ones((1, 4), np.float32), np.ones((3, 4), np.float32)).tolist())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[[4.0, 4.0, 4.0]]", result.stderr[-2000:]
    assert "faiss" not in result.stderr, result.stderr
