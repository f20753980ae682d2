"""Embedding catalogs: what predict writes and recommendations are served from.

A catalog folder holds L2-normalized float32 embeddings (``embeddings.npy``, one row per product),
their store row ids (``row_ids.npy``, ascending), the products' metadata (``products.tsv``) and a
``manifest.json`` with the fingerprints of the model, config and data that made it. Paths in the
manifest are relative to the run folder, so a run can be moved. The ``compatible`` catalog of a
type-aware model also holds its category-pair subspaces (:mod:`ctl_lightning.retrieval.subspaces`). It is written under a temporary
name and renamed into place, and loaded memory-mapped, so nothing is re-read per query.

Opening a catalog checks every file against the manifest: shapes, dtypes, and that every embedding
is finite (one sequential read, block by block). A damaged catalog is a one-line error naming the
file, never a traceback or a NaN ranked first.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctl_lightning.data.products import ProductTable
from ctl_lightning.errors import CtlError
from ctl_lightning.io import (
    building,
    read_json_object,
    replace_dir,
    reserve,
    write_json,
)
from ctl_lightning.retrieval.subspaces import SUBSPACES_FILE, PairSubspaces

log = logging.getLogger(__name__)

CATALOG_VERSION = 1
KINDS = ("similar", "compatible")
MANIFEST_FIELDS = {"format": str, "kind": str, "count": int, "dim": int, "model.state_fingerprint": str, "data": dict}
BLOCK_BYTES = 32 << 20  # what one block of a catalog read or written holds in memory


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
    subspaces: PairSubspaces | None = None  # a type-aware model's compatible catalog: its pair subspaces

    def __len__(self) -> int:
        return len(self.row_ids)

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    def position_of(self, row_id: int) -> int | None:
        i = int(np.searchsorted(self.row_ids, row_id))
        return i if i < len(self.row_ids) and self.row_ids[i] == row_id else None

    def resolve(self, path: str | None) -> Path | None:
        """A path the manifest gives relative to the run folder (older manifests: absolute)."""
        return None if not path else self.path / self.manifest.get("run_dir", "../..") / path

    @classmethod
    def load(cls, path: str | Path) -> Catalog:
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise CtlError(f"{path}: not a catalog (no manifest.json); catalogs are written by train.py or eval.py")
        manifest = read_json_object(manifest_path, MANIFEST_FIELDS)
        if manifest["format"] != "ctl-catalog" or manifest["kind"] not in KINDS:
            raise CtlError(f"{manifest_path}: not a ctl-lightning catalog manifest")
        count, dim = manifest["count"], manifest["dim"]
        embeddings = _load_array(path / "embeddings.npy", np.float32, (count, dim))
        row_ids = _load_array(path / "row_ids.npy", np.int64, (count,))
        if count and (row_ids[0] < 0 or (np.diff(row_ids) <= 0).any()):
            raise CtlError(f"{path / 'row_ids.npy'}: row ids are not increasing store rows; the catalog is damaged")
        bad = nonfinite_rows(embeddings)
        if len(bad):
            raise CtlError(
                f"{path / 'embeddings.npy'}: {len(bad)} embeddings are not finite (rows {bad[:5].tolist()}); rebuild the catalog"
            )
        table, table_rows = ProductTable.read_tsv(path / "products.tsv")
        if not np.array_equal(table_rows, row_ids):
            raise CtlError(f"{path / 'products.tsv'}: its row ids are not those of row_ids.npy; the catalog is damaged")
        return cls(path, embeddings, row_ids, table, manifest, _load_subspaces(path, manifest))


def _load_subspaces(path: Path, manifest: dict) -> PairSubspaces | None:
    """The subspaces the manifest announces, checked like the embeddings; ``None`` for a single space."""
    described = manifest.get("subspaces")
    if described is None:
        return None
    pairs = described.get("pairs") if isinstance(described, dict) else None
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(c, str) for c in p) for p in pairs):
        raise CtlError(f"{path / 'manifest.json'}: its subspaces entry does not list category pairs; the catalog is damaged")
    dim = manifest["dim"]
    matrices = _load_array(path / SUBSPACES_FILE, np.float32, (len(pairs), dim, dim))
    if len(nonfinite_rows(matrices.reshape(len(pairs), -1))):
        raise CtlError(f"{path / SUBSPACES_FILE}: holds NaN or inf; rebuild the catalog")
    return PairSubspaces(matrices, [tuple(p) for p in pairs], str(described.get("kind")))


def _load_array(path: Path, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """A ``.npy`` file of exactly ``dtype`` and ``shape``, memory-mapped; otherwise a one-line error."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise CtlError(f"{path}: file not found; the catalog is damaged") from None
    except (OSError, ValueError, EOFError) as error:
        raise CtlError(f"{path}: not a readable .npy file ({error}); the catalog is damaged") from None
    if array.dtype != dtype or array.shape != shape:
        raise CtlError(f"{path}: {array.dtype} {array.shape}, but {path.parent / 'manifest.json'} says {np.dtype(dtype)} {shape}")
    return array


def nonfinite_rows(vectors: np.ndarray, offset: int = 0) -> np.ndarray:
    """Positions (plus ``offset``) of the rows holding a NaN or an infinity, read block by block."""
    block = max(1, BLOCK_BYTES // max(1, vectors.itemsize * int(np.prod(vectors.shape[1:]))))
    found = [np.flatnonzero(~np.isfinite(vectors[i : i + block]).all(axis=1)) + i + offset for i in range(0, len(vectors), block)]
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


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


def write_catalog(
    path: Path,
    expected_rows: np.ndarray,
    shards: list[Shard],
    table: ProductTable,
    manifest: dict,
    block_bytes: int = BLOCK_BYTES,
    subspaces: PairSubspaces | None = None,
) -> Path:
    """Merge shards into a catalog folder, block by block in row-id order, and publish it atomically
    (with a type-aware model's ``subspaces``, published in the same rename).

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
                bad = nonfinite_rows(buffer, start)
                if len(bad):  # a diverged model: NaN would rank first in every search
                    raise CtlError(
                        f"{path}: the model gave non-finite embeddings (NaN or inf) for store rows {rows[bad][:5].tolist()}; "
                        "catalog not written (did training diverge? try a lower optimizer.lr)"
                    )
                # An all-zero vector (e.g. a backbone's ReLU features of a nearly blank crop) cannot be
                # normalized; it stays zero, scores 0 against everything, and is counted in the manifest.
                zero_vectors += int((np.linalg.norm(buffer, axis=1) < 1e-6).sum())
                handle.write(buffer.tobytes())
        np.save(tmp / "row_ids.npy", rows)
        table.write_tsv(tmp / "products.tsv", rows)
        header_fields = {"format": "ctl-catalog", "version": CATALOG_VERSION, "count": len(rows), "zero_vectors": zero_vectors}
        if subspaces is not None:
            np.save(tmp / SUBSPACES_FILE, np.asarray(subspaces.matrices, dtype=np.float32))
            header_fields["subspaces"] = subspaces.describe()
        write_json(tmp / "manifest.json", {**header_fields, **manifest})
        replace_dir(tmp, path)
    if zero_vectors:
        log.warning(f"{path}: {zero_vectors} products have an all-zero embedding (blank crops?); they match nothing")
    return path
