"""Predict -> catalogs, through Lightning's ``BasePredictionWriter``.

The pipeline hands the writer the datamodule whose products it writes (its store, data root and
``predict_rows``); the model gives the embeddings and, for a type-aware model, the pair subspaces.

Each rank streams its batches to a shard on disk (row ids and both embeddings), so memory stays
flat however large the catalog. After the last batch, rank 0 merges the shards block by block in
row-id order into the ``similar`` and ``compatible`` catalogs, having checked that every product
appears exactly once.
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

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        self._files["row_ids"].write(prediction["row_ids"].cpu().numpy().astype(np.int64).tobytes())
        for kind in KINDS:
            vectors = prediction[kind].float().cpu().numpy()
            self._dims[kind] = vectors.shape[1]
            self._files[kind].write(vectors.tobytes())

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for handle in self._files.values():
            handle.close()
        (self._shard_dir(trainer.global_rank) / "dims.json").write_text(json.dumps(self._dims))
        trainer.strategy.barrier("catalog-shards-written")
        if trainer.is_global_zero:
            start = time.perf_counter()
            self._merge(trainer, pl_module)
            self.merge_seconds = time.perf_counter() - start
        trainer.strategy.barrier("catalog-merged")

    def _merge(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = self.datamodule
        store = datamodule.store
        shards = sorted((self.output_dir / ".shards").glob("rank*"))
        dims = json.loads((shards[0] / "dims.json").read_text())
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


def catalog_subspaces(pl_module: pl.LightningModule) -> PairSubspaces | None:
    """A type-aware model's category-pair maps, as the compatible catalog stores them; ``None`` for a single space."""
    subspaces = pl_module.pair_subspaces()
    if subspaces is None:
        return None
    return PairSubspaces(subspaces.matrices().float().cpu().numpy(), subspaces.pairs, subspaces.kind)


def relative_to(path: str | Path, folder: Path) -> str:
    """``path`` relative to ``folder``: catalogs name files relative to their run, so a run can move."""
    return os.path.relpath(Path(path).resolve(), folder.resolve())
