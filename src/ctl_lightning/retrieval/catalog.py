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
import shutil
from contextlib import ExitStack
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


def _flat_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors.reshape(len(vectors), int(np.prod(vectors.shape[1:])))


def row_squares(vectors: np.ndarray) -> np.ndarray:
    """Each row's sum of squares, by one SIMD pass without temporaries (``np.linalg.norm`` squares into
    a copy of the block first: five times slower)."""
    flat = _flat_rows(vectors)
    return np.einsum("ij,ij->i", flat, flat)


def _nonfinite(block: np.ndarray, squares: np.ndarray) -> np.ndarray:
    """Positions of the rows of ``block`` holding a NaN or an infinity, given its :func:`row_squares`.

    Such a row has a non-finite sum of squares; so does a finite row whose squares overflow, which
    the exact check of the few suspects clears.
    """
    suspects = np.flatnonzero(~np.isfinite(squares))
    return suspects[~np.isfinite(_flat_rows(block[suspects])).all(axis=1)]


def nonfinite_rows(vectors: np.ndarray, offset: int = 0) -> np.ndarray:
    """Positions (plus ``offset``) of the rows holding a NaN or an infinity, read block by block."""
    block = max(1, BLOCK_BYTES // max(1, vectors.itemsize * int(np.prod(vectors.shape[1:]))))
    found = []
    for i in range(0, len(vectors), block):
        part = vectors[i : i + block]
        found.append(_nonfinite(part, row_squares(part)) + i + offset)
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


class CatalogBuild:
    """One catalog folder being written: the one place where embeddings are checked and a catalog is published.

    Embeddings come in store-row order, as the blocks of a shard merge or as the batches of a
    single-process predict. Each write is checked (known products, increasing rows, finite values,
    the catalog's dim) and goes to its place in ``embeddings.npy`` in a temporary folder (reserved
    in full on entering, so a full disk fails at once); :meth:`publish` checks that every expected
    row came exactly once, adds ``row_ids.npy``, ``products.tsv`` and ``manifest.json`` and renames
    the folder into place. Leaving the ``with`` block unpublished, by an error or not, removes the
    temporary folder; a killed process leaves it for the next build of the same folder to remove.
    """

    def __init__(self, path: Path, expected_rows: np.ndarray, dim: int):
        self.path = Path(path)
        self.rows = np.sort(np.asarray(expected_rows, dtype=np.int64))
        self.dim = dim
        self.count = 0  # rows written
        self.zero_vectors = 0
        self._last = -1  # the last position written: positions must increase across writes
        self._next = 0  # the position the file is at
        self._stack: ExitStack | None = None
        self._published = False

    def __enter__(self) -> CatalogBuild:
        with ExitStack() as stack:  # a failure here (a full disk) unwinds what was entered so far
            self._tmp = stack.enter_context(building(self.path, len(self.rows) * self.dim * 4))
            header = np.lib.format.open_memmap(self._tmp / "embeddings.npy", mode="w+", dtype=np.float32, shape=(len(self.rows), self.dim))
            self._offset = header.offset
            del header  # only the header was written; the data follows in order
            reserve(self._tmp / "embeddings.npy", self._offset + len(self.rows) * self.dim * 4)
            self._handle = stack.enter_context(open(self._tmp / "embeddings.npy", "r+b"))
            self._handle.seek(self._offset)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info) -> bool:
        suppressed = self._stack.__exit__(*exc_info) if self._stack else False
        self._stack = None
        if not self._published:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return suppressed

    def positions(self, row_ids: np.ndarray) -> np.ndarray:
        """Where ``row_ids`` (increasing store rows) go in the catalog; an error if any is not one of its products."""
        row_ids = np.asarray(row_ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.rows, row_ids), max(len(self.rows) - 1, 0))
        unknown = self.rows[pos] != row_ids if len(self.rows) else np.ones(len(pos), bool)
        if unknown.any():
            raise CtlError(f"{self.path}: row ids {row_ids[unknown][:5].tolist()} are not products of this catalog")
        if (np.diff(pos) <= 0).any():
            raise self._not_increasing()
        return pos

    def _not_increasing(self) -> CtlError:
        return CtlError(f"{self.path}: the row ids of a rank's predict are not increasing; predict must not shuffle")

    def require_each_once(self, missing: int, repeated: int) -> None:
        if missing or repeated:
            raise CtlError(f"{self.path}: {missing} products missing and {repeated} embedded more than once; catalog not written")

    def write(self, positions: np.ndarray, vectors: np.ndarray) -> None:
        """Write the embeddings of catalog rows ``positions`` (from :meth:`positions`, after those of earlier writes)."""
        if vectors.ndim != 2 or vectors.shape != (len(positions), self.dim):
            raise CtlError(f"{self.path}: embeddings of shape {vectors.shape} for {len(positions)} rows of a {self.dim}-dim catalog")
        if not len(positions):
            return
        if positions[0] <= self._last:
            raise self._not_increasing()
        squares = row_squares(vectors)
        bad = _nonfinite(vectors, squares)
        if len(bad):  # a diverged model: NaN would rank first in every search
            raise CtlError(
                f"{self.path}: the model gave non-finite embeddings (NaN or inf) for store rows {self.rows[positions[bad]][:5].tolist()}; "
                "catalog not written (did training diverge? try a lower optimizer.lr)"
            )
        # An all-zero vector (e.g. a backbone's ReLU features of a nearly blank crop) cannot be
        # normalized; it stays zero, scores 0 against everything, and is counted in the manifest.
        self.zero_vectors += int((squares < 1e-12).sum())  # a norm under 1e-6
        runs = np.flatnonzero(np.diff(positions) != 1) + 1  # rows missing in between: their space stays zero, publish refuses
        for pos, part in zip(np.split(positions, runs), np.split(vectors, runs)):
            if pos[0] != self._next:
                self._handle.seek(self._offset + int(pos[0]) * self.dim * 4)
            self._handle.write(np.ascontiguousarray(part, dtype=np.float32).reshape(-1).view(np.uint8).data)
            self._next = int(pos[-1]) + 1
        self._last = int(positions[-1])
        self.count += len(positions)

    def require_complete(self) -> None:
        """Every expected row written (exactly once: writes only move forward)."""
        self.require_each_once(len(self.rows) - self.count, 0)

    def publish(self, table: ProductTable, manifest: dict, subspaces: PairSubspaces | None = None, products: Path | None = None) -> Path:
        """Check that the catalog is complete, write its row ids, products and manifest (with a
        type-aware model's ``subspaces``) and rename it into place. ``products``: a ``products.tsv`` of
        the same rows (the store's own, for a catalog of every product, or another catalog's), copied
        rather than formatted again (3 to 5 us a row)."""
        self.require_complete()
        self._handle.close()
        np.save(self._tmp / "row_ids.npy", self.rows)
        if products is None:
            table.write_tsv(self._tmp / "products.tsv", self.rows)
        else:
            shutil.copyfile(products, self._tmp / "products.tsv")
        header_fields = {"format": "ctl-catalog", "version": CATALOG_VERSION, "count": len(self.rows), "zero_vectors": self.zero_vectors}
        if subspaces is not None:
            np.save(self._tmp / SUBSPACES_FILE, np.asarray(subspaces.matrices, dtype=np.float32))
            header_fields["subspaces"] = subspaces.describe()
        write_json(self._tmp / "manifest.json", {**header_fields, **manifest})
        replace_dir(self._tmp, self.path)
        self._published = True
        if self.zero_vectors:
            log.warning(f"{self.path}: {self.zero_vectors} products have an all-zero embedding (blank crops?); they match nothing")
        return self.path
