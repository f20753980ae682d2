"""Approximate indexes saved beside their catalog, and the fingerprint that says when one is stale.

A partition's index is a folder ``<catalog>/index/<kind>/<partition>/`` holding ``index.faiss``
(faiss's own format) and ``index.json``: the partition's identity (the index kind, its build
settings, the rows, the dimension and a SHA-256 of the partition's vectors in order) and the file's
size. The folder is written under a temporary name and renamed into place (``ctl_lightning.io``), so
a reader sees a whole index or none. Hashing the vectors is one sequential read of the partition
(about 0.3 s per million 128-d rows here), far cheaper than a rebuild, and it notices any change:
a retrained model, a rebuilt catalog, products added, removed, reordered or moved to another category.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np

from ctl_lightning.errors import CtlError
from ctl_lightning.io import building, replace_dir, write_json

log = logging.getLogger(__name__)

FORMAT = "ctl-ann-index"
VERSION = 1
INDEX_FILE, RECORD_FILE = "index.faiss", "index.json"
CHUNK_ROWS = 1 << 17  # rows read at a time, to hash them or add them to an index: memory holds one chunk
_warned_unsaved = False  # whether this process has said that it cannot save an index


def partition_dir(folder: Path, partition: str) -> Path:
    """A folder name for ``partition`` that any file system takes: its readable part and a short hash
    that keeps names apart (``Tops/Tees`` and ``Tops_Tees``)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", partition)[:60].strip("._") or "partition"
    return folder / f"{readable}-{hashlib.sha256(partition.encode()).hexdigest()[:8]}"


def rows_in_chunks(embeddings: np.ndarray, rows: np.ndarray):
    """``embeddings[rows]`` as contiguous float32 chunks of at most ``CHUNK_ROWS`` rows, in order."""
    for start in range(0, len(rows), CHUNK_ROWS):
        yield np.ascontiguousarray(embeddings[rows[start : start + CHUNK_ROWS]], dtype=np.float32)


def vectors_digest(embeddings: np.ndarray, rows: np.ndarray) -> str:
    """SHA-256 of the partition's vectors in order (and so of their count and dimension)."""
    digest = hashlib.sha256(str(embeddings.shape[1]).encode())
    for chunk in rows_in_chunks(embeddings, rows):
        digest.update(chunk.data)
    return digest.hexdigest()[:32]


def _difference(saved: dict, wanted: dict) -> str:
    """Why a saved identity is not the wanted one, in words."""
    if saved.get("vectors") != wanted["vectors"]:
        return "the catalog's vectors in this partition changed since it was built"
    if saved.get("build") != wanted["build"]:
        return f"it was built with {saved.get('build')}, the settings now are {wanted['build']}"
    key = next(k for k in wanted if saved.get(k) != wanted[k])
    return f"its {key} is {saved.get(key)!r}, not {wanted[key]!r}"


def load_partition(folder: Path, identity: dict, faiss) -> tuple[object | None, str | None]:
    """The index saved in ``folder`` if it is whole and of ``identity``; otherwise ``None`` and why
    not (``None`` too when nothing was saved: a first build needs no reason)."""
    record_path, index_path = folder / RECORD_FILE, folder / INDEX_FILE
    if not folder.is_dir():
        return None, None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        saved, size = record["identity"], record["file_bytes"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"{record_path} is unreadable ({error})"
    if saved != identity:
        return None, _difference(saved if isinstance(saved, dict) else {}, identity)
    try:
        actual = index_path.stat().st_size
        if actual != size:
            return None, f"{index_path} holds {actual:,} bytes, not the {size:,} written"
        index = faiss.read_index(str(index_path))
    except (OSError, RuntimeError) as error:  # faiss reports a damaged file as a RuntimeError
        return None, f"{index_path} is unreadable ({str(error).strip().splitlines()[-1][-200:]})"
    if index.ntotal != identity["rows"] or index.d != identity["dim"] or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None, f"{index_path} holds {index.ntotal} vectors of {index.d} dims, not {identity['rows']} of {identity['dim']}"
    return index, None


def save_partition(folder: Path, index, identity: dict, faiss, build_seconds: float) -> bool:
    """Write the index and its record to ``folder`` atomically; whether it could.

    A folder that cannot be written (a read-only catalog, a full disk) leaves the index in memory
    only, rebuilt at the next start: the process says so once, naming the first folder.
    """
    global _warned_unsaved
    try:
        with building(folder) as tmp:
            faiss.write_index(index, str(tmp / INDEX_FILE))
            record = {"format": FORMAT, "version": VERSION, "identity": identity, "faiss": faiss.__version__}
            size = (tmp / INDEX_FILE).stat().st_size
            write_json(tmp / RECORD_FILE, {**record, "file_bytes": size, "build_seconds": round(build_seconds, 3)})
            replace_dir(tmp, folder)
    except (OSError, RuntimeError, CtlError) as error:  # faiss reports a failed write as a RuntimeError
        reason = str(error).strip().splitlines()[-1][-200:]
        if not _warned_unsaved:
            log.warning(f"cannot save the index under {folder} ({reason}): indexes are kept in memory and built again at the next start")
        _warned_unsaved = True
        return False
    return True
