"""Approximate indexes at scale: build time, memory, single-query latency and recall@10 against exact.

    python -m ctl_lightning.benchmarks.ann --rows 1000000 10000000 --out experiments/benchmarks

Each size is a synthetic catalog (:func:`clustered_catalog`) searched as one partition, the worst
case (a real query scans one category). Queries are held-out points of the same distribution, one at
a time as a product page asks; recall@10 is against exact top-10s from matrix products in batches.
The exact index, ivf and hnsw each run through the project's own classes at their defaults, and the
search setting (``nprobe``, ``ef_search``) at three values. An index is saved and loaded again, so
the load time (fingerprint included) is measured too. A kind whose build, projected from its rate
at a smaller size of the same run, would take longer than ``--max-build-minutes`` is skipped, and the
report says so with the rate. Results go to ``ann.json`` (one run per host, as ``results.json``; a
rerun replaces the sizes it measures) and ``ANN.md`` (:mod:`ctl_lightning.benchmarks.ann_report`).
Not part of ``make bench``: 10M rows take about 15 minutes and 11 GB of memory (hnsw, projected at
about 47 minutes from its 1M rate, left out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ctl_lightning.benchmarks.ann_report import write_ann_report
from ctl_lightning.benchmarks.machine import machine_info, status_kib
from ctl_lightning.benchmarks.report import run_of, with_run
from ctl_lightning.benchmarks.retrieval import recall_at_k
from ctl_lightning.retrieval.ann import ApproximateIndex, build_settings
from ctl_lightning.retrieval.index import ExactIndex, IndexSettings

REPO = Path(__file__).resolve().parents[3]
DIM, K = 128, 10
SEARCHES = {"ivf": ("nprobe", (16, 32, 64)), "hnsw": ("ef_search", (128, 256, 512))}
GENERATOR = (
    "rows // 10,000 group directions uniform on the sphere; rows // 100 cluster centres, each a group direction plus "
    "0.3 times a random unit vector; cluster sizes Dirichlet(1); a point is its centre plus a Gaussian in a random 16-d "
    "subspace of the cluster (norm about U(0.6, 1.2)) plus isotropic noise (norm about 0.4), L2-normalized; rows in random order"
)


def clustered_catalog(rows: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """L2-normalized float32 ``[rows, dim]`` vectors with neighbourhoods at several scales (``GENERATOR``).

    Uniform random vectors have no neighbourhood structure in 128 dims, unlike real embeddings; well
    separated clusters are too easy (k-means finds them and IVF probes one cell). Overlapping
    clusters inside groups give a continuum where neighbours straddle cells, as in learned spaces.
    """
    rng = np.random.default_rng(seed)
    groups, clusters, rank = max(2, rows // 10_000), max(8, rows // 100), 16

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    tops = unit(rng.standard_normal((groups, dim), dtype=np.float32))
    centres = unit(tops[rng.integers(groups, size=clusters)] + 0.3 * unit(rng.standard_normal((clusters, dim), dtype=np.float32)))
    spread = rng.uniform(0.6, 1.2, clusters).astype(np.float32)
    counts = rng.multinomial(rows, rng.dirichlet(np.ones(clusters)))
    places = np.split(rng.permutation(rows), np.cumsum(counts)[:-1])
    out = np.empty((rows, dim), dtype=np.float32)
    for c, (count, place) in enumerate(zip(counts, places)):
        basis = np.linalg.qr(rng.standard_normal((dim, rank), dtype=np.float32))[0].T
        x = centres[c] + (spread[c] / np.sqrt(rank)) * (rng.standard_normal((count, rank), dtype=np.float32) @ basis)
        x += (0.4 / np.sqrt(dim)) * rng.standard_normal((count, dim), dtype=np.float32)
        out[place] = unit(x)
    return out


def exact_top(queries: np.ndarray, vectors: np.ndarray, k: int = K, chunk: int = 1 << 18) -> np.ndarray:
    """Rows of the exact top-k of every query: matrix products over chunks of rows, merged."""
    q = torch.from_numpy(queries)
    best_scores = torch.full((len(queries), k), -torch.inf)
    best_rows = torch.zeros((len(queries), k), dtype=torch.int64)
    for start in range(0, len(vectors), chunk):
        top = torch.topk(q @ torch.from_numpy(vectors[start : start + chunk]).T, min(k, len(vectors) - start), dim=1)
        scores, rows = torch.cat([best_scores, top.values], 1), torch.cat([best_rows, top.indices + start], 1)
        keep = torch.topk(scores, k, dim=1).indices
        best_scores, best_rows = scores.gather(1, keep), rows.gather(1, keep)
    return best_rows.numpy()


def single_queries(index: ExactIndex, queries: np.ndarray, truth: np.ndarray, warmup: int = 10) -> dict:
    """Latency of one query at a time (p50, p99), and recall@10 of what they found."""
    for query in queries[:warmup]:
        index.search(query[None], K, "0")
    seconds, found = [], []
    for query in queries:
        start = time.perf_counter()
        _scores, rows = index.search(query[None], K, "0")
        seconds.append(time.perf_counter() - start)
        found.append(rows[0])
    ms = 1000 * np.array(seconds)
    return {
        "queries": len(queries),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "recall_at_10": recall_at_k(found, truth, K),
    }


def index_bytes(index) -> int:
    """What a faiss IVF-Flat or HNSW-Flat index holds: vectors, ids, centroids or links."""
    if hasattr(index, "hnsw"):
        graph = index.hnsw
        return index.ntotal * index.d * 4 + 4 * graph.neighbors.size() + 4 * graph.levels.size() + 8 * graph.offsets.size()
    return index.ntotal * (index.code_size + 8) + index.nlist * index.d * 4


def approximate(kind: str, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, folder: Path) -> dict:
    """Build ``kind`` at its defaults (saved in ``folder``), load it again, and search it at each setting."""
    categories = np.zeros(len(vectors), dtype=np.int64)
    settings = IndexSettings(kind, exact_below=0)
    rss_before = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on is the build's
    index = ApproximateIndex(vectors, categories, settings, folder)
    start = time.perf_counter()
    index.warm()
    build_s = time.perf_counter() - start
    out = {
        "build_settings": build_settings(settings, len(vectors)),
        "build_s": build_s,
        "rows_per_s": len(vectors) / build_s,
        "rss_growth_mib": (status_kib("VmRSS") - rss_before) / 1024,
        "peak_rss_growth_mib": (status_kib("VmHWM") - rss_before) / 1024,
        "index_mib": index_bytes(index.partition_index("0")) / 2**20,
        "file_mib": sum(f.stat().st_size for f in folder.rglob("*.faiss")) / 2**20,
    }
    del index
    loaded = ApproximateIndex(vectors, categories, settings, folder)
    start = time.perf_counter()
    loaded.warm()
    out["load_s"] = time.perf_counter() - start
    assert loaded.events == {"0": "loaded"}, loaded.events
    name, values = SEARCHES[kind]
    out["searches"] = []
    for value in values:
        loaded.settings = replace(settings, **{name: value})
        out["searches"].append({name: value, **single_queries(loaded, queries, truth)})
    shutil.rmtree(folder, ignore_errors=True)
    return out


def bench_size(rows: int, n_queries: int, exact_queries: int, folder: Path, skip: dict[str, str]) -> dict:
    start = time.perf_counter()
    data = clustered_catalog(rows + n_queries)
    vectors, queries = data[:rows], np.ascontiguousarray(data[rows:])
    generated_s = time.perf_counter() - start
    start = time.perf_counter()
    truth = exact_top(queries, vectors)
    out = {"rows": rows, "dim": DIM, "queries": n_queries, "generate_s": generated_s, "ground_truth_s": time.perf_counter() - start}
    exact = ExactIndex(vectors, np.zeros(rows, dtype=np.int64))
    out["exact"] = single_queries(exact, queries[:exact_queries], truth[:exact_queries])
    del exact
    for kind in SEARCHES:
        print(f"[ann] {rows:,} rows: {kind} ...", flush=True)
        out[kind] = {"skipped": skip[kind]} if kind in skip else approximate(kind, vectors, queries, truth, folder / kind)
    return out


def projected_skips(measured: list[dict], rows: int, max_minutes: float) -> dict[str, str]:
    """The kinds whose build at ``rows``, at the rate measured at the largest smaller size (this run's or
    this host's earlier run's), would take longer than ``max_minutes``; why, for each."""
    skip = {}
    for kind in SEARCHES:
        built = sorted((m for m in measured if m["rows"] < rows and "build_s" in m[kind]), key=lambda m: m["rows"])
        if built:
            rate = built[-1][kind]["rows_per_s"]
            minutes = rows / rate / 60
            if minutes > max_minutes:
                skip[kind] = (
                    f"not built: at the {rate:,.0f} rows/s measured at {built[-1]['rows']:,} rows its build would take about "
                    f"{minutes:.0f} min (over --max-build-minutes {max_minutes:g}), and the rate only falls as the index grows"
                )
    return skip


def run(sizes: list[int], n_queries: int, exact_queries: int, data: Path, max_minutes: float, earlier: list[dict]) -> dict:
    """Every size, smallest first; ``earlier``: this host's sizes measured before, for the build projections."""
    done: list[dict] = []
    for rows in sorted(sizes):
        done.append(bench_size(rows, n_queries, exact_queries, data, projected_skips([*earlier, *done], rows, max_minutes)))
    return {"sizes": done}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctl_lightning.benchmarks.ann", description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000], help="catalog sizes")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries, each searched alone")
    parser.add_argument("--exact-queries", type=int, default=100, help="of those, searched exactly too (0.5 s each at 10M rows)")
    parser.add_argument("--max-build-minutes", type=float, default=20.0)
    parser.add_argument("--out", default=str(REPO / "experiments" / "benchmarks"), help="where ann.json and ANN.md go")
    parser.add_argument("--data", default=str(REPO / ".bench-data" / "ann"), help="where indexes are saved while measured")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    earlier = json.loads((out / "ann.json").read_text()) if (out / "ann.json").is_file() else None
    before = run_of(earlier, machine_info())
    started = time.perf_counter()
    sizes = before["sizes"] if before else []
    result = run(args.rows, args.queries, min(args.exact_queries, args.queries), Path(args.data), args.max_build_minutes, sizes)
    command = " ".join(["python -m ctl_lightning.benchmarks.ann", *(argv if argv is not None else sys.argv[1:])])
    for size in result["sizes"]:
        size.update(command=command, omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    result.update(machine=machine_info(), seconds=time.perf_counter() - started, generator=GENERATOR)
    # Sizes this run did not measure keep their earlier figures.
    result["sizes"] = sorted([s for s in sizes if s["rows"] not in args.rows] + result["sizes"], key=lambda s: s["rows"])
    recorded = with_run(earlier, result)
    (out / "ann.json").write_text(json.dumps(recorded, indent=2) + "\n")
    print(write_ann_report(recorded, out / "ANN.md"))


if __name__ == "__main__":
    main()
