"""Predict -> catalogs, through Lightning's ``BasePredictionWriter``.

The pipeline hands the writer the datamodule whose products it writes (its store, data root and
``predict_rows``); the model gives the embeddings and, for a type-aware model, the pair subspaces.

Each rank streams its batches to a shard on disk (row ids and both embeddings), so memory stays
flat however large the catalog, and when its last batch is written it publishes a completion record
(``done.json``: its row count and dims) atomically. Once every rank has passed the barrier, rank 0
alone merges the shards, block by block in row-id order (time linear in the products), into the
``similar`` and ``compatible`` catalogs, having checked that each of the ``world_size`` shards is
complete (its record present, its files of the recorded sizes: on a shared filesystem a node that
died mid-predict leaves neither) and that every product appears exactly once. A catalog is published
by one rename, so a failed predict leaves no catalog that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from ctl_lightning.errors import CtlError
from ctl_lightning.io import write_json
from ctl_lightning.models.checkpoint import state_fingerprint
from ctl_lightning.retrieval.catalog import KINDS, Shard, file_fingerprint, write_catalog
from ctl_lightning.retrieval.subspaces import PairSubspaces

DESCRIPTIONS = {
    "similar": "backbone features: the paper's similar-products embedding",
    "compatible": "embedding head output: complementary (compatible) products",
}
TYPE_AWARE_DESCRIPTION = (
    "type-aware head's general embedding: complementary products, each (query, target) "
    "category pair searched in its subspace (subspaces.npy)"
)


class CatalogWriter(BasePredictionWriter):
    def __init__(self, output_dir: str | Path, datamodule: pl.LightningDataModule, run_dir: str | Path | None = None):
        super().__init__(write_interval="batch")
        self.datamodule = datamodule
        self.output_dir = Path(output_dir)
        self.run_dir = Path(run_dir) if run_dir else self.output_dir.parent
        self._files: dict = {}
        self.written: dict[str, Path] = {}
        self.merge_seconds = 0.0  # time rank 0 spent merging shards into the catalogs

    def _shard_dir(self, rank: int) -> Path:
        return self.output_dir / ".shards" / f"rank{rank}"

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        shard = self._shard_dir(trainer.global_rank)
        shutil.rmtree(shard, ignore_errors=True)
        shard.mkdir(parents=True)
        # Held open across predict batches and closed when predict ends, so no `with` block fits.
        self._files = {name: open(shard / f"{name}.bin", "wb") for name in ("row_ids", *KINDS)}  # noqa: SIM115
        self._dims: dict[str, int] = {}
        self._rows = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        self._files["row_ids"].write(prediction["row_ids"].cpu().numpy().astype(np.int64).tobytes())
        self._rows += len(prediction["row_ids"])
        for kind in KINDS:
            vectors = prediction[kind].float().cpu().numpy()
            self._dims[kind] = vectors.shape[1]
            self._files[kind].write(vectors.tobytes())

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for handle in self._files.values():
            handle.flush()
            os.fsync(handle.fileno())  # on a shared filesystem, rank 0 reads these from another node
            handle.close()
        write_json(self._shard_dir(trainer.global_rank) / DONE, {"rows": self._rows, "dims": self._dims})
        trainer.strategy.barrier("catalog-shards-written")
        if trainer.is_global_zero:
            start = time.perf_counter()
            self._merge(trainer, pl_module)
            self.merge_seconds = time.perf_counter() - start
        trainer.strategy.barrier("catalog-merged")

    def _merge(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = self.datamodule
        store = datamodule.store
        shards = [self._shard_dir(rank) for rank in range(trainer.world_size)]  # not a glob: no stale rank of an older run
        dims = complete_shards(shards)
        config_file = self.run_dir / ".hydra" / "config.yaml"
        manifest = {
            "model": {
                "backbone": getattr(pl_module, "backbone_name", type(pl_module).__name__),
                "state_fingerprint": state_fingerprint(pl_module.state_dict()),
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
        row_ids = [np.fromfile(shard / "row_ids.bin", dtype=np.int64) for shard in shards]
        subspaces = catalog_subspaces(pl_module)
        for kind in KINDS:
            parts = [Shard(ids, shard / f"{kind}.bin", dims[kind]) for ids, shard in zip(row_ids, shards) if len(ids)]
            described = {
                "run_dir": relative_to(self.run_dir, self.output_dir / kind),
                "kind": kind,
                "dim": dims[kind],
                "embedding": TYPE_AWARE_DESCRIPTION if kind == "compatible" and subspaces else DESCRIPTIONS[kind],
            }
            self.written[kind] = write_catalog(
                self.output_dir / kind,
                datamodule.predict_rows,
                parts,
                store.table,
                {**manifest, **described},
                subspaces=subspaces if kind == "compatible" else None,
            )
        shutil.rmtree(self.output_dir / ".shards", ignore_errors=True)


DONE = "done.json"


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


def catalog_subspaces(pl_module: pl.LightningModule) -> PairSubspaces | None:
    """A type-aware model's category-pair maps, as the compatible catalog stores them; ``None`` for a single space."""
    subspaces = pl_module.pair_subspaces()
    if subspaces is None:
        return None
    return PairSubspaces(subspaces.matrices().float().cpu().numpy(), subspaces.pairs, subspaces.kind)


def relative_to(path: str | Path, folder: Path) -> str:
    """``path`` relative to ``folder``: catalogs name files relative to their run, so a run can move."""
    return os.path.relpath(Path(path).resolve(), folder.resolve())
