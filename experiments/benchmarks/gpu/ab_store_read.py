"""A/B of the store's batch read on the GPU fine-tuning epoch: ``preadv`` per row against one memmap gather.

Run on the device after ``bench/gpu.sh`` has built its data under /tmp/benchdata; it prints one
epoch time per variant (preadv, memmap, preadv again, to show the drift between runs).
"""

from pathlib import Path

import numpy as np

from ctl_lightning.benchmarks import gpu
from ctl_lightning.data.store import ProductStore


def memmap_read(self, rows):
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), self.size, self.size, 3), dtype=np.uint8)
    out[order] = self.images[rows[order]]
    return out


dm = gpu._datamodule(Path("/tmp/benchdata"), 20000, gpu.SEED_TRIPLETS, 64, 64, 8, True)
for name in ("preadv", "memmap", "preadv"):
    if name == "memmap":
        ProductStore.read = memmap_read
    elif hasattr(ProductStore, "_orig"):
        ProductStore.read = ProductStore._orig
    else:
        ProductStore._orig = ProductStore.read
    r = gpu.epoch(dm, True, freeze=False)
    print(name, "fine-tune epoch", round(r["epoch_s"], 1), flush=True)
