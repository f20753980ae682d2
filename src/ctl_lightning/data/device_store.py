"""The product store's pixels held where the model runs: a batch is a gather by row id.

On a GPU the loader path starved the card: each worker read a batch of crops from the store, copied
it into pinned memory and handed it across processes, and the catalog build reached 0.06 of pure
inference (experiments/benchmarks/GPU.md). The whole store is small next to a GPU's memory (96,932
crops at 64 px are 1.2 GB; the 480,000 products of the real CTL release 5.9 GB), so with
``data.device_store`` it is copied there once, and a batch that carries row ids only becomes pixels by
one ``index_select`` on the device. Where it does not fit within ``data.device_store_share`` of the
free GPU memory, the pixels stay in pinned host memory: a batch is then gathered on the host into a
page-locked buffer and copied asynchronously.

``auto`` applies on CUDA devices only, so the CPU default path (loader workers reading the store)
stays as it is; ``true`` applies on any device, which is how the CPU tests run this path.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

from ctl_lightning.data.store import ProductStore
from ctl_lightning.errors import CtlError

log = logging.getLogger(__name__)

DEVICE_STORE_CHOICES = ("auto", True, False)
COPY_BYTES = 1 << 27  # bytes of crops per chunk while loading: bounded host memory at any image size, few copies
# Threads that read one chunk together: one thread copying from the page cache reached about 3.3 GB/s
# on the H200 host (the store's load, 0.36 s of a 0.93 s catalog build; GPU.md, session 13), and each
# ``preadv`` releases the GIL.
LOAD_THREADS = min(8, os.cpu_count() or 1)


def check_setting(device_store, share: float) -> None:
    if device_store not in DEVICE_STORE_CHOICES:
        raise CtlError(f"data.device_store must be auto, true or false, got {device_store!r}")
    if not 0 < share <= 1:
        raise CtlError(f"data.device_store_share must be in (0, 1], got {share!r}")


def _chunks(store: ProductStore) -> list[tuple[int, int]]:
    """The row ranges ``[first, last)`` a load reads, each about ``COPY_BYTES``."""
    step = max(1, COPY_BYTES // (store.size * store.size * 3))
    return [(first, min(first + step, len(store))) for first in range(0, len(store), step)]


def _read_chunk(store: ProductStore, first: int, last: int, out: np.ndarray, pool: ThreadPoolExecutor) -> None:
    """Rows ``[first, last)`` into ``out``, split among the pool's threads, each reading its own
    consecutive rows (positional reads of one descriptor: no shared file offset)."""
    bounds = np.linspace(first, last, min(LOAD_THREADS, last - first) + 1).astype(np.int64)
    parts = [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]
    for done in [pool.submit(store.read, np.arange(a, b), out=out[a - first : b - first]) for a, b in parts]:
        done.result()


def _copy_staged(store: ProductStore, pixels: torch.Tensor, pool: ThreadPoolExecutor) -> None:
    """Fill ``pixels`` on a GPU through two reused pinned buffers: the store reads a chunk into one (in
    ``LOAD_THREADS`` threads) while the other's copy runs. A read into fresh pageable memory takes a page fault per 4 KiB and is copied
    once more by the driver before the transfer; these buffers are faulted in once and copied directly.
    Not yet run on a GPU in this project's measurements (experiments/benchmarks/GPU.md, session 10)."""
    chunks = _chunks(store)
    rows = max((last - first for first, last in chunks), default=0)
    staging = [torch.empty((rows, *pixels.shape[1:]), dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    with torch.cuda.device(pixels.device):  # the copies and their events on that device's current stream
        copied = [torch.cuda.Event(), torch.cuda.Event()]  # recorded after each buffer's latest copy
        for chunk, (first, last) in enumerate(tqdm(chunks, desc="device store", unit="chunk", leave=False)):
            slot = chunk % 2
            if chunk >= 2:
                copied[slot].synchronize()  # the copy two chunks back has left this buffer
            buffer = staging[slot][: last - first]
            _read_chunk(store, first, last, buffer.numpy(), pool)
            pixels[first:last].copy_(buffer, non_blocking=True)
            copied[slot].record()
        torch.cuda.current_stream().synchronize()


class ResidentPixels:
    """Every crop of a store as one uint8 ``[N, H, W, 3]`` tensor, on ``device`` or in pinned host memory."""

    def __init__(self, pixels: torch.Tensor, device: torch.device, fingerprint: str, seconds: float = 0.0):
        self.pixels = pixels
        self.device = device
        self.fingerprint = fingerprint
        self.seconds = seconds  # how long loading took

    @property
    def on_device(self) -> bool:
        return self.pixels.device == self.device

    @classmethod
    def load(cls, store: ProductStore, device: torch.device, share: float) -> ResidentPixels:
        """Copy ``store`` onto ``device`` when it fits within ``share`` of its free memory, else into pinned host memory."""
        start = time.perf_counter()
        shape = (len(store), store.size, store.size, 3)
        nbytes = int(np.prod(shape))
        where = device
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if nbytes > share * free:
                where = torch.device("cpu")
                log.info(
                    f"device store: {nbytes / 2**30:.2f} GiB does not fit in {share:.0%} of {free / 2**30:.2f} GiB free; pinned host memory"
                )
        pixels = torch.empty(shape, dtype=torch.uint8, device=where, pin_memory=where.type == "cpu" and device.type == "cuda")
        with ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="device-store") as pool:
            if pixels.device.type == "cpu":
                for first, last in tqdm(_chunks(store), desc="device store", unit="chunk", leave=False):
                    _read_chunk(store, first, last, pixels[first:last].numpy(), pool)  # straight into place
            else:
                _copy_staged(store, pixels, pool)
        seconds = time.perf_counter() - start
        log.info(f"device store: {shape[0]} crops ({nbytes / 2**30:.2f} GiB) on {pixels.device} in {seconds:.1f} s")
        return cls(pixels, device, store.fingerprint, seconds)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 ``[len(rows), H, W, 3]`` on the device, in the order of ``rows``."""
        if self.on_device:
            return self.pixels.index_select(0, rows.to(self.device, non_blocking=True))
        rows = rows.cpu()
        staged = torch.empty((len(rows), *self.pixels.shape[1:]), dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        torch.index_select(self.pixels, 0, rows, out=staged)
        # The caching host allocator keeps `staged` until the copy that reads it has finished.
        return staged.to(self.device, non_blocking=True)

    def read(self, rows: np.ndarray) -> torch.Tensor:
        """What :meth:`ProductStore.read` gives, on the device: the feature cache and baseline embed from it."""
        return self.gather(torch.from_numpy(np.asarray(rows, dtype=np.int64)))


def deduplicate(triplet_rows: torch.Tensor, labels: torch.Tensor, categories: torch.Tensor, unique: bool = True) -> dict[str, torch.Tensor]:
    """``[B, 3]`` row ids -> the batch's distinct products once and triplets indexing them, on the
    rows' device: what :class:`~ctl_lightning.data.batches.TripletCollate` does on the host with
    ``np.unique``, in the same sorted order, so both paths give the same batch (``unique=False``:
    every triplet member its own entry, as ``data.dedup=false`` asks)."""
    if unique:
        rows, inverse = torch.unique(triplet_rows, sorted=True, return_inverse=True)
    else:
        rows, inverse = triplet_rows.reshape(-1), torch.arange(triplet_rows.numel(), device=triplet_rows.device)
    return {"row_ids": rows, "labels": labels[rows], "categories": categories[rows], "triplets": inverse.reshape(-1, 3)}
