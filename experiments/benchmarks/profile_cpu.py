"""Loops to profile the two CPU paths of issue 15 with perf (NOTES.md), and their same-run timings.

    python experiments/benchmarks/profile_cpu.py search [--product] [--float16] [--seconds 8]
    python experiments/benchmarks/profile_cpu.py read STORE_DIR [--old] [--batches 1000]
    python experiments/benchmarks/profile_cpu.py compare-read STORE_DIR
    python experiments/benchmarks/profile_cpu.py worker-handoff [--data .bench-data] [--batches 60]
    python experiments/benchmarks/profile_cpu.py search-parts [--rows 100000] [--batches 200]

``search`` runs single-query exact searches over 1M x 128 rows (``--product``: the matrix product the
engine used before its scan) and touches ``READY_FILE`` once set up, so that
``perf record -g -p PID -- sleep 5`` sees the searches only. ``read`` reads random 192-row batches
(``--old``: one ``preadv`` per run of rows into a fresh buffer, as before issue 15); run it under ``perf stat -e
page-faults,raw_syscalls:sys_enter,task-clock``. ``compare-read`` times the old read, the current
one and the memory-map read that was tried, in one run, alone and followed by the loader's float
normalization, and prints the resident file pages during a full pass of the current read.
``worker-handoff`` splits what a batch of the store loader costs the training process with 2 workers
(receiving a batch the workers already made, then normalizing it) from what it costs made in process,
for both of torch's sharing strategies; it builds `make bench`'s 2,000-outfit world under ``--data``.
``search-parts`` splits an exact single-query search of ``--rows`` rows into what `make bench` takes as its
bound (a full read of the block: its float32 sum), the scan of every row's score, and the top-10 of
those scores, timed in ``--batches`` alternating rounds with the whole search.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ctl_lightning.benchmarks.loading import BIAS, SCALE
from ctl_lightning.benchmarks.retrieval import _catalog
from ctl_lightning.data.store import ProductStore
from ctl_lightning.models.module import normalize_images
from ctl_lightning.retrieval.index import ExactIndex, scan_scores
from ctl_lightning.timing import measure_interleaved

READY_FILE = Path("/tmp/profile_cpu.ready")


def search(product: bool, float16: bool, seconds: float) -> None:
    vectors, categories = _catalog(1_000_000)
    query = np.random.default_rng(1).standard_normal((1, 128), dtype=np.float32)
    index = ExactIndex(vectors, categories, dtype="float16" if float16 else "float32", scan_queries=0 if product else 1)
    index.search(query, 10, "0")
    READY_FILE.touch()
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        index.search(query, 10, "0")
        count += 1
    print(f"{count} searches, {(time.perf_counter() - start) / count * 1e3:.1f} ms each")


def search_parts(rows: int, rounds: int) -> None:
    vectors, categories = _catalog(rows)
    query = np.random.default_rng(1).standard_normal((1, 128), dtype=np.float32)
    index = ExactIndex(vectors, categories)
    index.search(query, 10, "0")
    block = index._block("0")
    scores = torch.from_numpy(scan_scores(query, block.numpy()))
    parts = measure_interleaved(
        {
            "read (the bound)": block.sum,
            "scan": lambda: scan_scores(query, block.numpy()),
            "top-10": lambda: torch.topk(scores, 10, dim=1),
            "search": lambda: index.search(query, 10, "0"),
        },
        repeats=rounds,
    )
    read = parts["read (the bound)"]["median_s"]
    for name, timing in parts.items():
        print(f"{name}: {timing['median_s'] * 1e3:.2f} ms, {timing['median_s'] / read:.2f}x the read")


def old_read(store: ProductStore, descriptor: int, rows: np.ndarray) -> np.ndarray:
    """ProductStore.read before issue 15: one preadv per run of consecutive rows into a fresh buffer."""
    order = np.argsort(rows, kind="stable")
    ordered, row_bytes = rows[order], store.size * store.size * 3
    out = np.empty((len(rows), store.size, store.size, 3), dtype=np.uint8)
    flat = np.empty_like(out)
    runs = np.flatnonzero(np.diff(ordered) != 1) + 1
    for a, b in zip(np.r_[0, runs], np.r_[runs, len(rows)]):
        os.preadv(descriptor, [memoryview(flat[a:b]).cast("B")], int(ordered[a]) * row_bytes)
    out[order] = flat
    return out


def _batches(store: ProductStore, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, len(store), 192) for _ in range(count)]


def _rss_file_mib() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["RssFile"].split()[0]) / 1024


def read(store: ProductStore, old: bool, batches: int) -> None:
    descriptor = os.open(store.path / "images.u8", os.O_RDONLY)
    for rows in _batches(store, batches):
        old_read(store, descriptor, rows) if old else store.read(rows)


def mapping_read(store: ProductStore, rows: np.ndarray) -> np.ndarray:
    """The read tried and dropped in issue 15: copy rows out of the memory map, then unmap their pages."""
    images = store.images
    out = np.take(images, rows, axis=0, mode="clip")
    row_bytes, block = store.size * store.size * 3, 2 << 20
    start = int(rows.min()) * row_bytes // block * block
    stop = min(len(images._mmap), -(-(int(rows.max()) + 1) * row_bytes // block) * block)
    images._mmap.madvise(mmap.MADV_DONTNEED, start, stop - start)
    return out


def compare_read(store: ProductStore) -> None:
    """The three reads on the same ascending row sets, alone and followed by the loader's float normalization."""
    descriptor = os.open(store.path / "images.u8", os.O_RDONLY)
    batches = [np.unique(rows) for rows in _batches(store, 100)]  # the collates pass unique, ascending rows
    reads = {
        "old (preadv, fresh scratch)": lambda r: old_read(store, descriptor, r),
        "current (preadv into the result)": store.read,
        "mapping + madvise": lambda r: mapping_read(store, r),
    }
    for rows in batches[:5]:
        assert all(np.array_equal(fn(rows), store.read(rows)) for fn in reads.values())
    loops = {"read alone": lambda fn, r: fn(r), "read + normalize": lambda fn, r: normalize_images(torch.from_numpy(fn(r)), SCALE, BIAS)}
    times: dict[tuple[str, str], list[float]] = {(loop, name): [] for loop in loops for name in reads}
    for _ in range(7):
        for loop, body in loops.items():
            for name, fn in reads.items():
                start = time.perf_counter()
                for rows in batches:
                    body(fn, rows)
                times[loop, name].append((time.perf_counter() - start) / len(batches) * 1e3)
    for (loop, name), runs in times.items():
        print(f"{loop}, {name}: {statistics.median(runs):.2f} ms a batch of ~190 rows (fastest {min(runs):.2f})")
    before, peak = _rss_file_mib(), 0.0
    for start in range(0, len(store), 256):
        store.read(np.arange(start, min(len(store), start + 256)))
        peak = max(peak, _rss_file_mib())
    row_mib = store.size * store.size * 3 / 2**20
    print(f"RssFile over a full pass of {len(store) * row_mib:.0f} MiB with read(): {before:.1f} MiB before, {peak:.1f} MiB peak")


def _ms(total: float, count: int) -> str:
    return f"{total / count * 1e3:.2f} ms"


def worker_handoff(root: Path, batches: int) -> None:
    """Per batch: collate + normalize in process, against receive + normalize from 2 idle workers."""
    import torch.multiprocessing
    from torch.utils.data import DataLoader

    from ctl_lightning.benchmarks import setup
    from ctl_lightning.data.batches import RowsDataset, TripletCollate

    dm = setup.datamodule(root, 2000)
    dataset, collate = RowsDataset(dm.train_triplets), TripletCollate(dm.store, dm.labels, dm.categories)
    rng = np.random.default_rng(0)
    made = normalized = 0.0
    for _ in range(batches):
        start = time.perf_counter()
        batch = collate([dataset[i] for i in rng.choice(len(dataset), dm.batch_size, replace=False)])
        middle = time.perf_counter()
        normalize_images(batch["images"], SCALE, BIAS)
        made, normalized = made + middle - start, normalized + time.perf_counter() - middle
    print(f"in process: read and collate {_ms(made, batches)}, normalize {_ms(normalized, batches)} a batch")
    for strategy in ("file_descriptor", "file_system"):
        torch.multiprocessing.set_sharing_strategy(strategy)
        loader = DataLoader(dataset, batch_size=dm.batch_size, shuffle=True, num_workers=2, collate_fn=collate)
        batches_in = iter(loader)
        next(batches_in)
        received = first = again = 0.0
        for _ in range(batches):
            time.sleep(0.05)  # the workers fill their prefetch queue and go idle: no contention for the cores
            start = time.perf_counter()
            batch = next(batches_in)
            got = time.perf_counter()
            normalize_images(batch["images"], SCALE, BIAS)
            touched = time.perf_counter()
            normalize_images(batch["images"], SCALE, BIAS)
            received, first, again = received + got - start, first + touched - got, again + time.perf_counter() - touched
        del batches_in, loader
        print(
            f"2 idle workers, {strategy}: receive a ready batch {_ms(received, batches)}, normalize it "
            f"{_ms(first, batches)} (first touch of its shared memory), {_ms(again, batches)} again"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("search", "read", "compare-read", "worker-handoff", "search-parts"))
    parser.add_argument("--rows", type=int, default=100_000, help="catalog rows (search-parts)")
    parser.add_argument("store", nargs="?", help="a product store folder (read, compare-read)")
    parser.add_argument("--product", action="store_true")
    parser.add_argument("--float16", action="store_true")
    parser.add_argument("--old", action="store_true")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batches", type=int, help="batches (rounds) to time (read: 1000, worker-handoff: 60, search-parts: 200)")
    parser.add_argument("--data", type=Path, default=Path(".bench-data"), help="make bench's data folder (worker-handoff)")
    args = parser.parse_args()
    if args.mode == "search":
        search(args.product, args.float16, args.seconds)
    elif args.mode == "search-parts":
        search_parts(args.rows, args.batches or 200)
    elif args.mode == "worker-handoff":
        worker_handoff(args.data, args.batches or 60)
    elif args.mode == "read":
        read(ProductStore.open(args.store), args.old, args.batches or 1000)
    else:
        compare_read(ProductStore.open(args.store))


if __name__ == "__main__":
    main()
