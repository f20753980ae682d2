"""Predict -> catalogs, through Lightning's ``BasePredictionWriter``.

The pipeline hands the writer the datamodule whose products it writes (its store, data root and
``predict_rows``); the model gives the embeddings and, for a type-aware model, the pair subspaces.

One process (``trainer.world_size == 1``): each batch goes straight into the two catalogs' build
folders (:class:`~ctl_lightning.retrieval.catalog.CatalogBuild`), appended to ``embeddings.npy`` in
row order and checked as it comes (known products, increasing rows, finite values). When the last
batch is written, the catalogs are checked complete and published, each by one rename. There is
nothing to merge: the merge of a single shard used to rewrite every byte predict had just written
(2.7 s of a 6.4 s predict of 97k products on an H100).

Several ranks: each rank streams its batches to a shard on disk (row ids and both embeddings), so
memory stays flat however large the catalog, and when its last batch is written it publishes a
completion record (``done.json``: its row count and dims) atomically. Once every rank has passed the
barrier, rank 0 alone merges the shards, block by block in row-id order (time linear in the
products), into the ``similar`` and ``compatible`` catalogs, the two in parallel threads (numpy's
file I/O releases the GIL), having checked that each of the ``world_size`` shards is complete (its
record present, its files of the recorded sizes: on a shared filesystem a node that died
mid-predict leaves neither) and that every product appears exactly once. The merge drives the same
``CatalogBuild`` as the single-process stream, so both paths check and publish with one piece of
code and write the same bytes for the same predictions.

Either way a failed predict leaves no half-written catalog: the build folders are removed on an
error (``on_exception``), one left by a killed process is removed by the next build, and an older
catalog stays until its replacement is renamed over it. The stream checks every batch of both
catalogs before it publishes either; the merge publishes each catalog once its own checks pass.

A batch is written one batch late. On a CUDA device its predictions are copied without blocking into
pinned host memory and a CUDA event recorded; the copy is written to disk when the next batch ends,
after its event, so the device computes the next batch while the host writes this one, instead of a
blocking ``.cpu()`` per batch serialising the two. On the CPU the batch is kept as it is (no copy);
the deferral is the same code, and predict's end writes the batch still pending. The weights'
fingerprint, which both manifests carry, is hashed in a thread while predict runs, from a host copy
taken at its start: hashed at publish, ResNet18's took about 40 ms of the 49 ms from the last batch
to the published catalogs (experiments/benchmarks/GPU.md, session 16).

``merge_seconds``: the time from the end of the last batch to the published catalogs (on several
ranks, rank 0's, not counting its wait for the other ranks).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from ctl_lightning.data.store import TABLE as STORE_TABLE
from ctl_lightning.errors import CtlError
from ctl_lightning.io import write_json
from ctl_lightning.models.fingerprint import host_fingerprint, host_state
from ctl_lightning.retrieval.catalog import KINDS, CatalogBuild, file_fingerprint
from ctl_lightning.retrieval.merge import Shard, merge_catalogs
from ctl_lightning.retrieval.subspaces import PairSubspaces

DESCRIPTIONS = {
    "similar": "backbone features: the paper's similar-products embedding",
    "compatible": "embedding head output: complementary (compatible) products",
}
TYPE_AWARE_DESCRIPTION = (
    "type-aware head's general embedding: complementary products, each (query, target) "
    "category pair searched in its subspace (subspaces.npy)"
)


@dataclass
class HostBatch:
    """One batch's predictions on their way to host memory; ``ready``: the CUDA event after their copy."""

    tensors: dict[str, torch.Tensor]
    ready: torch.cuda.Event | None = None

    @classmethod
    def start_copy(cls, prediction: dict[str, torch.Tensor]) -> HostBatch:
        """Start copying ``prediction``'s row ids and embeddings to the host; a CPU tensor is kept as it is."""
        tensors = {"row_ids": prediction["row_ids"], **{kind: prediction[kind].float() for kind in KINDS}}
        host, ready = {}, None
        for name, tensor in tensors.items():
            if tensor.device.type != "cuda":
                host[name] = tensor.detach().cpu()
                continue
            host[name] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host[name].copy_(tensor, non_blocking=True)  # queued on the stream after the batch's compute
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(tensor.device))
        return cls(host, ready)

    def arrays(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The row ids and embeddings as numpy arrays, once the copy has completed."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.tensors["row_ids"].numpy().astype(np.int64), {kind: self.tensors[kind].numpy() for kind in KINDS}


class CatalogWriter(BasePredictionWriter):
    def __init__(self, output_dir: str | Path, datamodule: pl.LightningDataModule, run_dir: str | Path | None = None, shards: bool = False):
        """``shards``: write per-rank shards and merge them even on one process (what several ranks do)."""
        super().__init__(write_interval="batch")
        self.datamodule = datamodule
        self.output_dir = Path(output_dir)
        self.run_dir = Path(run_dir) if run_dir else self.output_dir.parent
        self.shards = shards
        self._files: dict = {}
        self._stack = ExitStack()  # what a failed predict closes and removes: shard files, catalog builds
        self._builds: dict[str, CatalogBuild] = {}
        self._pending: deque[HostBatch] = deque()
        self.written: dict[str, Path] = {}
        self.merge_seconds = 0.0  # from the last batch to the published catalogs
        self._fingerprint: Future[str] | None = None  # the manifests' state_fingerprint, hashed while predict runs

    def _shard_dir(self, rank: int) -> Path:
        return self.output_dir / ".shards" / f"rank{rank}"

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stack.close()
        self._stack = ExitStack()
        self._pending.clear()
        self._builds = {}
        self._files = {}
        self._dims: dict[str, int] = {}
        self._rows = 0
        self._stream = trainer.world_size == 1 and not self.shards
        writes_manifests = self._stream or trainer.is_global_zero
        self._fingerprint = _in_background(host_fingerprint, host_state(pl_module.state_dict())) if writes_manifests else None
        if not self._stream:
            shard = self._shard_dir(trainer.global_rank)
            shutil.rmtree(shard, ignore_errors=True)
            shard.mkdir(parents=True)
            # Held open across predict batches (closed by the stack when predict ends), so no `with` block fits.
            files = {name: open(shard / f"{name}.bin", "wb") for name in ("row_ids", *KINDS)}  # noqa: SIM115
            self._files = {name: self._stack.enter_context(handle) for name, handle in files.items()}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        self._pending.append(HostBatch.start_copy(prediction))
        while len(self._pending) > 1:  # the batch before this one: its copy has had this batch's compute to finish
            self._write(self._pending.popleft())

    def _write(self, batch: HostBatch) -> None:
        row_ids, vectors = batch.arrays()
        self._rows += len(row_ids)
        self._dims = {kind: v.shape[1] for kind, v in vectors.items()}
        if not self._stream:
            self._files["row_ids"].write(row_ids.tobytes())
            for kind in KINDS:
                self._files[kind].write(vectors[kind].tobytes())
            return
        try:
            if not self._builds:  # the first batch gives the dims
                rows = self.datamodule.predict_rows
                self._builds = {
                    kind: self._stack.enter_context(CatalogBuild(self.output_dir / kind, rows, self._dims[kind])) for kind in KINDS
                }
            for kind, build in self._builds.items():
                build.write(build.positions(row_ids), vectors[kind])
        except BaseException as error:
            self._stack.__exit__(type(error), error, error.__traceback__)  # removes the builds; a full disk becomes a CtlError
            raise

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A failed or interrupted predict removes the catalogs it was building and closes its shard files."""
        self._pending.clear()
        with suppress(CtlError):  # the exception on its way out says what failed
            self._stack.__exit__(type(exception), exception, exception.__traceback__)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = time.perf_counter()
        while self._pending:
            self._write(self._pending.popleft())
        if self._stream:
            with self._stack:
                self._publish(trainer, pl_module)
            self.merge_seconds = time.perf_counter() - start
            return
        for handle in self._files.values():
            handle.flush()
            os.fsync(handle.fileno())  # on a shared filesystem, rank 0 reads these from another node
        self._stack.close()
        write_json(self._shard_dir(trainer.global_rank) / DONE, {"rows": self._rows, "dims": self._dims})
        finishing = time.perf_counter() - start
        trainer.strategy.barrier("catalog-shards-written")
        if trainer.is_global_zero:
            start = time.perf_counter()
            self._merge(trainer, pl_module)
            self.merge_seconds = finishing + time.perf_counter() - start
        trainer.strategy.barrier("catalog-merged")

    def _manifests(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dims: dict[str, int], subspaces: PairSubspaces | None) -> dict:
        """Each catalog's manifest (less what :class:`CatalogBuild` adds: format, count, zero vectors, subspaces)."""
        datamodule = self.datamodule
        store = datamodule.store
        config_file = self.run_dir / ".hydra" / "config.yaml"
        common = {
            "model": {
                "backbone": getattr(pl_module, "backbone_name", type(pl_module).__name__),
                "state_fingerprint": self._fingerprint.result(),
                "checkpoint": relative_to(trainer.ckpt_path, self.run_dir) if trainer.ckpt_path else None,
            },
            "config": {
                "path": relative_to(config_file, self.run_dir) if config_file.is_file() else None,
                "fingerprint": file_fingerprint(config_file),
            },
            "data": {
                "store": relative_to(store.path, self.run_dir),
                "root": relative_to(datamodule.source.root, self.run_dir),
                "fingerprint": store.fingerprint,
                "image_size": store.size,
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return {
            kind: {
                **common,
                "run_dir": relative_to(self.run_dir, self.output_dir / kind),
                "kind": kind,
                "dim": dims[kind],
                "embedding": TYPE_AWARE_DESCRIPTION if kind == "compatible" and subspaces else DESCRIPTIONS[kind],
            }
            for kind in KINDS
        }

    def _publish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One process: check the streamed catalogs complete, then publish them."""
        if not self._builds:
            raise CtlError(f"{self.output_dir}: predict gave no embeddings; catalogs not written")
        for build in self._builds.values():  # neither is published unless both are complete
            build.require_complete()
        subspaces = catalog_subspaces(pl_module)
        manifests = self._manifests(trainer, pl_module, {kind: build.dim for kind, build in self._builds.items()}, subspaces)
        store = self.datamodule.store
        products = store_table_file(store, next(iter(self._builds.values())).rows)  # else the first catalog's, for the second
        for kind, build in self._builds.items():
            self.written[kind] = build.publish(store.table, manifests[kind], subspaces if kind == "compatible" else None, products)
            products = self.written[kind] / "products.tsv"
        shutil.rmtree(self.output_dir / ".shards", ignore_errors=True)  # an older sharded predict's, killed

    def _merge(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Several ranks: merge their shards into the two catalogs, in parallel."""
        shards = [self._shard_dir(rank) for rank in range(trainer.world_size)]  # not a glob: no stale rank of an older run
        dims = complete_shards(shards)
        subspaces = catalog_subspaces(pl_module)
        manifests = self._manifests(trainer, pl_module, dims, subspaces)
        row_ids = [np.fromfile(shard / "row_ids.bin", dtype=np.int64) for shard in shards]
        parts = {kind: [Shard(ids, shard / f"{kind}.bin", dims[kind]) for ids, shard in zip(row_ids, shards) if len(ids)] for kind in KINDS}
        store, rows = self.datamodule.store, self.datamodule.predict_rows
        products = store_table_file(store, np.sort(np.asarray(rows, dtype=np.int64)))
        written = merge_catalogs(self.output_dir, rows, parts, store.table, manifests, subspaces, products)
        self.written.update(written)
        shutil.rmtree(self.output_dir / ".shards", ignore_errors=True)


DONE = "done.json"


def _in_background(function, *args) -> Future:
    """``function(*args)`` in a thread of its own; its result, or its error, from the future."""
    executor = ThreadPoolExecutor(1, thread_name_prefix="catalog-writer")
    try:
        return executor.submit(function, *args)
    finally:
        executor.shutdown(wait=False)  # the thread ends once the call returns


def complete_shards(shards: list[Path]) -> dict[str, int]:
    """The embedding dims of these ranks' shards, each checked complete against its ``done.json``."""
    records = []
    for rank, shard in enumerate(shards):
        try:
            record = json.loads((shard / DONE).read_text())
        except (OSError, ValueError):
            raise CtlError(f"{shard}: rank {rank} did not finish predict (no readable {DONE}); catalogs not written") from None
        expected = {
            "row_ids.bin": record["rows"] * 8,
            **{f"{kind}.bin": record["rows"] * record["dims"].get(kind, 0) * 4 for kind in KINDS},
        }
        for name, size in expected.items():
            actual = (shard / name).stat().st_size if (shard / name).is_file() else None
            if actual != size:
                raise CtlError(f"{shard / name}: rank {rank}'s shard is incomplete ({actual} bytes, expected {size}); catalogs not written")
        records.append(record)
    dims = [r["dims"] for r in records if r["rows"]]
    if not dims or any(d != dims[0] for d in dims):
        raise CtlError(f"{shards[0].parent}: the ranks' shards disagree on embedding sizes ({[r['dims'] for r in records]})")
    return dims[0]


def store_table_file(store, rows: np.ndarray) -> Path | None:
    """The store's own ``products.tsv`` where a catalog lists every product of the store (sorted
    ``rows`` are ``0..n-1``): byte for byte what :meth:`ProductTable.write_tsv` writes for those rows,
    so catalogs copy it instead of formatting every row again (Python-bound, 3 to 5 us a row: on a
    GPU host, longer than embedding it). ``None`` for any other rows, or no such file."""
    file = Path(store.path) / STORE_TABLE
    return file if np.array_equal(rows, np.arange(len(store.table))) and file.is_file() else None


def catalog_subspaces(pl_module: pl.LightningModule) -> PairSubspaces | None:
    """A type-aware model's category-pair maps, as the compatible catalog stores them; ``None`` for a single space."""
    subspaces = pl_module.pair_subspaces()
    if subspaces is None:
        return None
    return PairSubspaces(subspaces.matrices().float().cpu().numpy(), subspaces.pairs, subspaces.kind)


def relative_to(path: str | Path, folder: Path) -> str:
    """``path`` relative to ``folder``: catalogs name files relative to their run, so a run can move."""
    return os.path.relpath(Path(path).resolve(), folder.resolve())
