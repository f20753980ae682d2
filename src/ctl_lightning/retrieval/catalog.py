"""Embedding catalogs: what predict writes and recommendations are served from.

A catalog folder holds L2-normalized float32 embeddings (``embeddings.npy``, one row per product),
their store row ids (``row_ids.npy``, ascending), the products' metadata (``products.tsv``) and a
``manifest.json`` with the fingerprints of the model, config and data that made it. It is written
under a temporary name and renamed into place, and loaded memory-mapped, so opening even a large
catalog is instant and nothing is re-read per query.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ctl_lightning.data.products import ProductTable
from ctl_lightning.errors import CtlError
from ctl_lightning.io import replace_dir, temporary_sibling, write_json

log = logging.getLogger(__name__)

CATALOG_VERSION = 1
KINDS = ("similar", "compatible")


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """Hash of a model's state dict: ties a catalog to the exact weights that embedded it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def file_fingerprint(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:20] if path.is_file() else None


@dataclass
class Catalog:
    """A loaded catalog; ``embeddings[i]`` belongs to store row ``row_ids[i]``."""

    path: Path
    embeddings: np.ndarray
    row_ids: np.ndarray
    table: ProductTable
    manifest: dict

    def __len__(self) -> int:
        return len(self.row_ids)

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    def position_of(self, row_id: int) -> int | None:
        i = int(np.searchsorted(self.row_ids, row_id))
        return i if i < len(self.row_ids) and self.row_ids[i] == row_id else None

    @classmethod
    def load(cls, path: str | Path) -> "Catalog":
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise CtlError(f"{path}: not a catalog (no manifest.json); catalogs are written by train.py or eval.py")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != "ctl-catalog":
            raise CtlError(f"{path}: manifest.json is not a ctl-lightning catalog manifest")
        embeddings = np.load(path / "embeddings.npy", mmap_mode="r")
        row_ids = np.load(path / "row_ids.npy")
        table, table_rows = ProductTable.read_tsv(path / "products.tsv")
        if not (len(embeddings) == len(row_ids) == len(table)) or not np.array_equal(table_rows, row_ids):
            raise CtlError(f"{path}: embeddings, row ids and products.tsv disagree; the catalog is damaged")
        return cls(path, embeddings, row_ids, table, manifest)


class CatalogBuilder:
    """Fills a catalog's embeddings chunk by chunk (memory stays flat), then publishes it atomically.

    ``row_ids`` are the products the catalog must hold; every one of them must be put exactly once,
    which :meth:`finish` verifies before anything becomes visible.
    """

    def __init__(self, path: Path, row_ids: np.ndarray, dim: int):
        self.path = Path(path)
        self.row_ids = np.sort(np.asarray(row_ids, dtype=np.int64))
        self.tmp = temporary_sibling(self.path)
        self.embeddings = np.lib.format.open_memmap(self.tmp / "embeddings.npy", mode="w+", dtype=np.float32, shape=(len(self.row_ids), dim))
        self.times_put = np.zeros(len(self.row_ids), dtype=np.int32)
        # An all-zero vector (e.g. a backbone's ReLU features of a nearly blank crop) cannot be
        # normalized; it stays zero, scores 0 against everything, and is counted in the manifest.
        self.zero_vectors = 0

    def put(self, row_ids: np.ndarray, vectors: np.ndarray) -> None:
        positions = np.searchsorted(self.row_ids, row_ids)
        positions = np.minimum(positions, len(self.row_ids) - 1)
        unknown = self.row_ids[positions] != row_ids
        if unknown.any():
            raise CtlError(f"{self.path}: row ids {row_ids[unknown][:5].tolist()} are not products of this catalog")
        self.embeddings[positions] = vectors
        self.zero_vectors += int((np.linalg.norm(vectors, axis=1) < 1e-6).sum())
        np.add.at(self.times_put, positions, 1)

    def finish(self, table: ProductTable, manifest: dict) -> Path:
        missing, repeated = int((self.times_put == 0).sum()), int((self.times_put > 1).sum())
        if missing or repeated:
            raise CtlError(f"{self.path}: {missing} products missing and {repeated} embedded more than once; catalog not written")
        self.embeddings.flush()
        del self.embeddings
        np.save(self.tmp / "row_ids.npy", self.row_ids)
        table.write_tsv(self.tmp / "products.tsv", self.row_ids)
        write_json(self.tmp / "manifest.json", {"format": "ctl-catalog", "version": CATALOG_VERSION, "count": len(self.row_ids),
                                                 "zero_vectors": self.zero_vectors, **manifest})
        replace_dir(self.tmp, self.path)
        if self.zero_vectors:
            log.warning(f"{self.path}: {self.zero_vectors} products have an all-zero embedding (blank crops?); they match nothing")
        return self.path
