"""Micro-batching: image queries that arrive within a few milliseconds share one forward pass.

One thread owns the model's forward passes. A request hands over its crop and gets a future; the thread
takes the first waiting crop, collects more for at most ``max_wait_s`` (or until ``max_batch``), embeds
them together and resolves every future with its own row. A row the model maps to NaN fails its own
request only. After :meth:`MicroBatcher.close` (a reload replaced the model) the crops already queued
are still embedded, and a late request embeds its crop itself: no request in flight fails.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from ctl_lightning.retrieval.embedder import check_finite

Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
_CLOSE = None


class MicroBatcher:
    def __init__(self, forward: Forward, max_batch: int = 16, max_wait_s: float = 0.005, on_batch: Callable[[int], None] | None = None):
        self.forward, self.max_batch, self.max_wait_s = forward, max(1, max_batch), max(0.0, max_wait_s)
        self.on_batch = on_batch  # called with each batch's size (metrics)
        self.batches = 0  # forward passes run so far
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ctl-serve-embedder", daemon=True)
        self._thread.start()

    def submit(self, crop: np.ndarray) -> Future:
        """A future of the crop's L2-normalized ``(similar, compatible)`` embeddings."""
        future: Future = Future()
        with self._lock:
            if not self._closed:
                self._queue.put((crop, future))
                return future
        self._complete([(crop, future)])  # closed: this model is being replaced; embed here
        return future

    def close(self) -> None:
        """Embed what is queued, then stop the thread (without waiting for it)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_CLOSE)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _CLOSE:
                return
            batch, closing = [first], False
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _CLOSE:
                    closing = True
                    break
                batch.append(item)
            self._complete(batch)
            if closing:
                return

    def _complete(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        with self._lock:
            self.batches += 1
        if self.on_batch is not None:
            self.on_batch(len(batch))
        try:
            similar, compatible = self.forward(np.stack([crop for crop, _ in batch]))
        except Exception as error:
            for _, future in batch:
                future.set_exception(error)
            return
        for i, (_, future) in enumerate(batch):
            try:
                future.set_result(check_finite(similar[i], compatible[i]))
            except Exception as error:
                future.set_exception(error)
