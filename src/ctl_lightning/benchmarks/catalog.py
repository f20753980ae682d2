"""Catalog build: predict (store -> model -> sharded writer -> merged catalogs) against pure inference.

Pure inference is the model alone on normalized tensors already in memory, at the same batch size:
the ceiling for predict. Peak memory is measured in a fresh process per catalog size. The merge of
per-rank shards into catalogs, what rank 0 does after a multi-node predict, is timed alone on
synthetic shards of up to 1M rows, to show that its time grows linearly with the products; beside
it, in alternating runs, a plain copy of the same bytes (every shard read, as many bytes written to
fresh files, the two catalogs in two threads as the merge does) gives what the host's file system
alone costs at each size.

    python -m ctl_lightning.benchmarks.catalog ROOT OUTFITS SIZE   # one build, prints its peak RSS
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from ctl_lightning.allocator import keep_freed_memory
from ctl_lightning.benchmarks import setup
from ctl_lightning.benchmarks.machine import status_kib
from ctl_lightning.data.products import ProductSpec, ProductTable
from ctl_lightning.retrieval.catalog import BLOCK_BYTES
from ctl_lightning.retrieval.merge import Shard, merge_catalogs
from ctl_lightning.retrieval.writer import CatalogWriter
from ctl_lightning.timing import measure_interleaved, rate

MERGE_DIMS = {"similar": 512, "compatible": 128}  # a ResNet18's features and the head's embedding


def _predict(model, dm, out: Path) -> None:
    writer = CatalogWriter(out / "catalogs", dm, run_dir=out)
    trainer = pl.Trainer(callbacks=[writer], logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(model, datamodule=dm, return_predictions=False)


def throughput(dm, repeats: int) -> dict:
    model = setup.model(feature_cache=False).eval()
    rows = dm.predict_rows
    with torch.inference_mode():
        tensors = [
            model.preprocess(torch.from_numpy(dm.store.read(rows[i : i + dm.eval_batch_size])))
            for i in range(0, len(rows), dm.eval_batch_size)
        ]

    def pure():
        with torch.inference_mode():
            for x in tensors:
                model.head(model.backbone(x))

    with tempfile.TemporaryDirectory() as tmp:
        timings = measure_interleaved({"predict": lambda: _predict(model, dm, Path(tmp)), "pure_inference": pure}, repeats=repeats)
    predict, inference = (rate(len(rows), timings[name]) for name in ("predict", "pure_inference"))
    return {
        "products": len(rows),
        "batch_size": dm.eval_batch_size,
        "predict": predict,
        "pure_inference": inference,
        "ratio": predict["per_s"] / inference["per_s"],
        # each round's predict against the pure inference run beside it: what the host's load did not move
        "round_ratios": [p / q for p, q in zip(inference["runs"], predict["runs"], strict=True)],
    }


def copy_bytes(shards: list[Shard], out: Path) -> None:
    """Read every shard and write as many bytes to one fresh file (reserved first, as the merge
    reserves its catalog): the file system's share of a merge of these shards, with no checks,
    scatter or products.tsv."""
    buffer = np.empty(BLOCK_BYTES // 4, dtype=np.float32)  # the merge's block size
    total = sum(os.path.getsize(shard.vectors) for shard in shards)
    try:
        with open(out, "wb") as target:
            os.posix_fallocate(target.fileno(), 0, total)
            for shard in shards:
                with open(shard.vectors, "rb") as source:
                    while got := source.readinto(buffer.data):
                        target.write(buffer.data[:got])
    finally:
        out.unlink(missing_ok=True)


def copy_both(shards: dict[str, list[Shard]], folder: Path) -> None:
    """:func:`copy_bytes` of each catalog's shards, in parallel threads as the merge writes them."""
    with ThreadPoolExecutor(len(shards)) as pool:
        list(pool.map(lambda kind: copy_bytes(shards[kind], folder / f"copy-{kind}.bin"), shards))


def merge_scaling(sizes: tuple[int, ...], root: Path, ranks: int = 2, repeats: int = 3, most_runs: int = 15) -> dict:
    """Seconds to merge ``ranks`` interleaved shards (as DistributedSampler deals rows) into both
    catalogs of every product, and to copy their bytes (:func:`copy_bytes`), in alternating runs.

    A smaller size runs more often (``repeats`` times the ratio of sizes, up to ``most_runs``): the
    smallest, about 0.15 s, is the per-row ratio's denominator, and three runs of it measured the
    host's load as much as the merge (0.81x to 1.51x between runs, NOTES.md)."""
    rng = np.random.default_rng(0)
    results = []
    for rows in sizes:
        runs = max(repeats, min(most_runs, repeats * max(sizes) // rows))
        table = ProductTable([ProductSpec(f"p{i}", f"o{i // 4}", f"c{i % 13}", "catalog", "", None) for i in range(rows)])
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            shards: dict[str, list[Shard]] = {kind: [] for kind in MERGE_DIMS}
            for rank in range(ranks):
                ids = np.arange(rank, rows, ranks, dtype=np.int64)
                for kind, dim in MERGE_DIMS.items():
                    path = Path(tmp) / f"rank{rank}-{kind}.bin"
                    with path.open("wb") as handle:
                        for start in range(0, len(ids), 65536):
                            count = min(65536, len(ids) - start)
                            handle.write(rng.standard_normal((count, dim), dtype=np.float32).tobytes())
                    shards[kind].append(Shard(ids, path, dim))
            # Every product is in the catalogs, so the merge copies the store's own products.tsv (as
            # the writer does: retrieval/writer.py, store_table_file), written here as the store holds it.
            store_table = Path(tmp) / "store-products.tsv"
            table.write_tsv(store_table)
            merge = partial(
                merge_catalogs,
                Path(tmp) / "catalogs",
                table.positions,
                shards,
                table,
                {kind: {} for kind in MERGE_DIMS},
                products=store_table,
            )

            copy = partial(copy_both, shards, Path(tmp))
            timing = measure_interleaved({"merge": merge, "copy": copy}, repeats=runs, warmup=0)
        total, copied = timing["merge"]["median_s"], timing["copy"]["median_s"]
        results.append(
            {"rows": rows, "runs": runs, "total_s": total, "us_per_row": 1e6 * total / rows, "copy_s": copied, "over_copy": total / copied}
        )
    return {
        "ranks": ranks,
        "dims": MERGE_DIMS,
        "repeats": repeats,
        "sizes": results,
        "per_row_growth": results[-1]["us_per_row"] / results[0]["us_per_row"],
        "over_copy_growth": results[-1]["over_copy"] / results[0]["over_copy"],
        "copy_per_row_growth": (results[-1]["copy_s"] / results[-1]["rows"]) / (results[0]["copy_s"] / results[0]["rows"]),
    }


def peak_rss_mib(root: Path, outfits: int, image_size: int) -> dict:
    """Build one catalog in a fresh process; its peak resident memory and the catalog's size."""
    result = subprocess.run(
        [sys.executable, "-m", "ctl_lightning.benchmarks.catalog", str(root), str(outfits), str(image_size)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    keep_freed_memory()  # as the ctl-* commands and train.py run
    root, outfits, image_size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    dm = setup.datamodule(root, outfits, image_size=image_size)
    model = setup.model(feature_cache=False)
    before_kib = status_kib("VmRSS")
    # Reset the high-water mark (Linux clear_refs 5), so the peak is that of predict alone.
    Path("/proc/self/clear_refs").write_text("5")
    with tempfile.TemporaryDirectory() as tmp:
        _predict(model, dm, Path(tmp))
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*.npy"))
    peak_kib = status_kib("VmHWM")
    print(
        json.dumps(
            {
                "outfits": outfits,
                "products": len(dm.predict_rows),
                "image_size": image_size,
                "catalog_mib": size / 2**20,
                "rss_before_predict_mib": before_kib / 1024,
                "peak_rss_during_predict_mib": peak_kib / 1024,
                "peak_rss_process_lifetime_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
