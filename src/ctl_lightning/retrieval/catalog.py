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
from ctl_lightning.io import building, replace_dir, reserve, write_json

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


@dataclass
class Shard:
    """One rank's predictions for one catalog: row ids (increasing) and a raw float32 ``[n, dim]`` file."""

    row_ids: np.ndarray
    vectors: Path
    dim: int

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` of the shard, read from disk (never memory-mapped: memory stays flat)."""
        count = (hi - lo) * self.dim
        return np.fromfile(self.vectors, dtype=np.float32, count=count, offset=lo * self.dim * 4).reshape(hi - lo, self.dim)


def write_catalog(path: Path, expected_rows: np.ndarray, shards: list[Shard], table: ProductTable, manifest: dict,
                  block_bytes: int = 32 << 20) -> Path:  # fmt: skip
    """Merge shards into a catalog folder, block by block in row-id order, and publish it atomically.

    Every expected row must come from exactly one shard entry, which is verified before anything is
    written. Memory holds one block (``block_bytes``) however large the catalog: shards are read
    with plain reads and the output written sequentially, not through memory maps whose pages would
    count as the process's own.
    """
    path = Path(path)
    rows = np.sort(np.asarray(expected_rows, dtype=np.int64))
    dim = shards[0].dim
    positions = []
    for shard in shards:
        pos = np.minimum(np.searchsorted(rows, shard.row_ids), max(len(rows) - 1, 0))
        unknown = rows[pos] != shard.row_ids if len(rows) else np.ones(len(pos), bool)
        if unknown.any():
            raise CtlError(f"{path}: row ids {shard.row_ids[unknown][:5].tolist()} are not products of this catalog")
        if (np.diff(pos) <= 0).any():
            raise CtlError(f"{path}: a shard's row ids are not increasing; predict must not shuffle")
        positions.append(pos)
    counts = np.bincount(np.concatenate(positions), minlength=len(rows)) if positions else np.zeros(len(rows), int)
    missing, repeated = int((counts == 0).sum()), int((counts > 1).sum())
    if missing or repeated:
        raise CtlError(f"{path}: {missing} products missing and {repeated} embedded more than once; catalog not written")
    data_bytes = len(rows) * dim * 4
    with building(path, data_bytes) as tmp:
        header = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=np.float32, shape=(len(rows), dim))
        offset = header.offset
        del header  # only the header was written; the data follows in order
        reserve(tmp / "embeddings.npy", offset + data_bytes)
        zero_vectors = 0
        block = max(1, block_bytes // (4 * dim))
        with open(tmp / "embeddings.npy", "r+b") as handle:
            handle.seek(offset)
            for start in range(0, len(rows), block):
                stop = min(start + block, len(rows))
                buffer = np.empty((stop - start, dim), dtype=np.float32)
                for shard, pos in zip(shards, positions):
                    lo, hi = np.searchsorted(pos, [start, stop])
                    if hi > lo:
                        buffer[pos[lo:hi] - start] = shard.read(int(lo), int(hi))
                # An all-zero vector (e.g. a backbone's ReLU features of a nearly blank crop) cannot be
                # normalized; it stays zero, scores 0 against everything, and is counted in the manifest.
                zero_vectors += int((np.linalg.norm(buffer, axis=1) < 1e-6).sum())
                handle.write(buffer.tobytes())
        np.save(tmp / "row_ids.npy", rows)
        table.write_tsv(tmp / "products.tsv", rows)
        write_json(tmp / "manifest.json", {"format": "ctl-catalog", "version": CATALOG_VERSION, "count": len(rows),
                                           "zero_vectors": zero_vectors, **manifest})  # fmt: skip
        replace_dir(tmp, path)
    if zero_vectors:
        log.warning(f"{path}: {zero_vectors} products have an all-zero embedding (blank crops?); they match nothing")
    return path
