"""The product store's pixels held where the model runs: a batch is a gather by row id.

On a GPU the loader path starved the card: each worker read a batch of crops from the store, copied
it into pinned memory and handed it across processes, and the catalog build reached 0.06 of pure
inference (experiments/benchmarks/GPU.md). The whole store is small next to a GPU's memory (96,932
crops at 64 px are 1.2 GB; the 480,000 products of the real CTL release 5.9 GB), so with
``data.device_store`` it is copied there once, and a batch that carries row ids only becomes pixels by
one ``index_select`` on the device. Where it does not fit within ``data.device_store_share`` of the
free GPU memory, the pixels stay in pinned host memory: a batch is then gathered on the host into a
page-locked buffer and copied asynchronously. The copy runs in the background (:class:`_Loading`), so
that reading rows in ascending order, as predict and the feature cache do, overlaps it.

``auto`` applies on CUDA devices only, so the CPU default path (loader workers reading the store)
stays as it is; ``true`` applies on any device, which is how the CPU tests run this path.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
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


def _read_chunk(store: ProductStore, first: int, last: int, out: np.ndarray, pool: ThreadPoolExecutor, threads: int) -> None:
    """Rows ``[first, last)`` into ``out``, split among ``threads`` of the pool, each reading its own
    consecutive rows (positional reads of one descriptor: no shared file offset)."""
    bounds = np.linspace(first, last, min(threads, last - first) + 1).astype(np.int64)
    parts = [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]
    for done in [pool.submit(store.read, np.arange(a, b), out=out[a - first : b - first]) for a, b in parts]:
        done.result()


class _Loading:
    """The store's rows copied into ``pixels`` chunk by chunk, in ascending order, by a background
    thread. A reader waits only for the chunks its rows are in: predict and the feature cache read rows
    in ascending order, so they start on the first chunks while the others load (on the H200 host the
    load was 0.36 s of a 0.93 s catalog build, GPU.md, session 13); a training batch's rows span the
    store, so its first batch waits for the whole load, as before."""

    def __init__(self, store: ProductStore, pixels: torch.Tensor, threads: int):
        self.chunks = _chunks(store)
        self.threads = threads
        self.chunk_rows = self.chunks[0][1] - self.chunks[0][0] if self.chunks else 1
        self.ready = [threading.Event() for _ in self.chunks]  # set once a chunk's copy is queued (GPU) or done
        self.copied: list[torch.cuda.Event | None] = [None] * len(self.chunks)  # on a GPU: after each chunk's copy
        self.loaded = 0  # chunks in place (on a GPU: queued on the copy stream)
        self.error: BaseException | None = None
        self.seconds: float | None = None
        self.path, self.device = store.path, pixels.device
        self.thread = threading.Thread(target=self._run, args=(store, pixels), name="device-store-load", daemon=True)
        self.thread.start()

    def _run(self, store: ProductStore, pixels: torch.Tensor) -> None:
        start = time.perf_counter()
        try:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="device-store") as pool:
                if pixels.device.type == "cpu":
                    for chunk, (first, last) in enumerate(tqdm(self.chunks, desc="device store", unit="chunk", leave=False)):
                        _read_chunk(store, first, last, pixels[first:last].numpy(), pool, self.threads)  # straight into place
                        self._done(chunk)
                else:
                    self._copy_staged(store, pixels, pool)
        except Exception as error:  # raised to the reader that waits for these rows
            self.error = error
        finally:
            self.seconds = time.perf_counter() - start
            for ready in self.ready:
                ready.set()
        if self.error is None:
            nbytes = pixels.numel()
            log.info(f"device store: {len(pixels)} crops ({nbytes / 2**30:.2f} GiB) on {pixels.device} in {self.seconds:.1f} s")

    def _copy_staged(self, store: ProductStore, pixels: torch.Tensor, pool: ThreadPoolExecutor) -> None:
        """Fill ``pixels`` on a GPU through two reused pinned buffers, on a stream of its own: the store
        reads a chunk into one (in ``threads`` threads) while the other's copy runs. A read into
        fresh pageable memory takes a page fault per 4 KiB and is copied once more by the driver before
        the transfer; these buffers are faulted in once and copied directly."""
        rows = max((last - first for first, last in self.chunks), default=0)
        staging = [torch.empty((rows, *pixels.shape[1:]), dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        stream = torch.cuda.Stream(pixels.device)
        with torch.cuda.device(pixels.device), torch.cuda.stream(stream):
            for chunk, (first, last) in enumerate(tqdm(self.chunks, desc="device store", unit="chunk", leave=False)):
                if chunk >= 2:
                    self.copied[chunk - 2].synchronize()  # the copy two chunks back has left this buffer
                buffer = staging[chunk % 2][: last - first]
                _read_chunk(store, first, last, buffer.numpy(), pool, self.threads)
                pixels[first:last].copy_(buffer, non_blocking=True)
                self.copied[chunk] = torch.cuda.Event()
                self.copied[chunk].record(stream)
                if chunk == len(self.chunks) - 1:
                    stream.synchronize()  # once the last chunk is ready, every copy has landed: no reader waits any more
                self._done(chunk)

    def _done(self, chunk: int) -> None:
        self.loaded = chunk + 1
        self.ready[chunk].set()

    def wait_for(self, row: int | None) -> bool:
        """Block until the rows up to ``row`` (``None``: every row) are in place for the current stream;
        whether the whole store is."""
        chunk = len(self.chunks) - 1 if row is None else min(row // self.chunk_rows, len(self.chunks) - 1)
        if chunk < 0:
            return True
        self.ready[chunk].wait()
        if chunk >= self.loaded:  # set by a failed load
            self._raise_error()
        if self.copied[chunk] is not None and chunk < len(self.chunks) - 1:
            torch.cuda.current_stream(self.device).wait_event(self.copied[chunk])
        return chunk == len(self.chunks) - 1

    def finish(self) -> float:
        """Block until the load has ended; the seconds it took."""
        self.thread.join()
        self._raise_error()
        return self.seconds

    def _raise_error(self) -> None:
        if self.error is not None:
            raise CtlError(f"device store: loading {self.path} failed: {self.error}") from self.error


class ResidentPixels:
    """Every crop of a store as one uint8 ``[N, H, W, 3]`` tensor, on ``device`` or in pinned host
    memory, filled in the background (:class:`_Loading`): reads wait for the rows they ask for."""

    def __init__(self, pixels: torch.Tensor, device: torch.device, fingerprint: str, loading: _Loading | None = None):
        self.pixels = pixels
        self.device = device
        self.fingerprint = fingerprint
        self._loading = loading
        self._seconds = 0.0

    @property
    def on_device(self) -> bool:
        return self.pixels.device == self.device

    def wait(self) -> float:
        """Block until every crop is in place; the seconds the load took."""
        if self._loading is not None:
            self._seconds, self._loading = self._loading.finish(), None
        return self._seconds

    @classmethod
    def load(cls, store: ProductStore, device: torch.device, share: float, threads: int | None = None) -> ResidentPixels:
        """Start copying ``store`` onto ``device`` when it fits within ``share`` of its free memory, else
        into pinned host memory, read by ``threads`` threads (``LOAD_THREADS`` by default); it returns at
        once, while the copy goes on."""
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
        return cls(pixels, device, store.fingerprint, _Loading(store, pixels, threads or LOAD_THREADS))

    def _wait_for(self, rows: torch.Tensor, last_row: int | None) -> None:
        """While the load goes on: wait for the chunks up to ``last_row``, the largest of ``rows``. Rows
        already on a GPU are not read for it: reading a value from the device waits for all the work
        queued there (in a catalog build, each batch would wait for the one before). Without
        ``last_row`` they wait for the whole load instead, a wait on the host."""
        if self._loading is None or not len(rows):
            return
        if last_row is None and rows.device.type == "cpu":
            last_row = int(rows.max())
        if self._loading.wait_for(last_row):
            self.wait()

    def gather(self, rows: torch.Tensor, last_row: int | None = None) -> torch.Tensor:
        """uint8 ``[len(rows), H, W, 3]`` on the device, in the order of ``rows``; ``last_row``: their
        largest, where the caller knows it on the host (see :meth:`_wait_for`)."""
        self._wait_for(rows, last_row)
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


def deduplicate(
    triplet_rows: torch.Tensor, labels: torch.Tensor, categories: torch.Tensor, unique: bool = True, distinct: int | None = None
) -> dict[str, torch.Tensor]:
    """``[B, 3]`` row ids -> the batch's distinct products once and triplets indexing them, on the
    rows' device: what :class:`~ctl_lightning.data.batches.TripletCollate` does on the host with
    ``np.unique``, in the same sorted order, so both paths give the same batch (``unique=False``:
    every triplet member its own entry, as ``data.dedup=false`` asks). ``distinct``: the number of
    distinct rows where the caller knows it on the host; without it ``torch.unique`` finds it, which on
    a GPU waits for all the work queued there, once a training step."""
    if not unique:
        rows, inverse = triplet_rows.reshape(-1), torch.arange(triplet_rows.numel(), device=triplet_rows.device)
    elif distinct is None:
        rows, inverse = torch.unique(triplet_rows, sorted=True, return_inverse=True)
    else:
        rows, inverse = sorted_unique(triplet_rows.reshape(-1), distinct)
    return {"row_ids": rows, "labels": labels[rows], "categories": categories[rows], "triplets": inverse.reshape(-1, 3)}


def sorted_unique(values: torch.Tensor, distinct: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(values, sorted=True, return_inverse=True)`` of 1-d ``values`` holding ``distinct``
    different ones: every size is then known beforehand, so nothing waits for the device, and each op
    is deterministic (no scatter of repeated indices)."""
    ordered, order = torch.sort(values)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    slot = torch.cumsum(first, 0) - 1  # each sorted value's place among the distinct ones
    starts = torch.searchsorted(slot, torch.arange(distinct, device=values.device))  # where each place begins
    return ordered[starts], slot[torch.argsort(order)]
