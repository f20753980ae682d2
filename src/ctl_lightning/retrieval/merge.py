"""Merging per-rank shards into catalogs: what rank 0 does after a predict on several ranks or nodes.

Each rank has streamed its embeddings to a shard on disk (a raw float32 file per catalog, and its
row ids). The merge reads them block by block in row-id order into a :class:`CatalogBuild`, so its
memory stays flat and its time linear in the products, and the ``similar`` and ``compatible``
catalogs are merged in two threads (numpy's file I/O and copies release the GIL).
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctl_lightning.data.products import ProductTable
from ctl_lightning.errors import CtlError
from ctl_lightning.io import building
from ctl_lightning.retrieval.catalog import BLOCK_BYTES, CatalogBuild
from ctl_lightning.retrieval.subspaces import PairSubspaces


@dataclass
class Shard:
    """One rank's predictions for one catalog: row ids (increasing) and a raw float32 ``[n, dim]`` file."""

    row_ids: np.ndarray
    vectors: Path
    dim: int

    def read(self, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
        """Rows ``lo:hi`` of the shard, read from disk into the start of ``out`` (a float32 buffer kept
        across reads: a fresh one would be mapped and page-faulted in at every block) and returned.
        Never memory-mapped, so that memory stays flat."""
        rows = out[: hi - lo]
        with open(self.vectors, "rb") as handle:
            handle.seek(lo * self.dim * 4)
            got = handle.readinto(rows.reshape(-1).view(np.uint8).data)
        if got != rows.nbytes:
            raise CtlError(
                f"{self.vectors}: {got} bytes where rows {lo}:{hi} of a {self.dim}-dim shard need {rows.nbytes}; the shard is truncated"
            )
        return rows


def scatter_rows(target: np.ndarray, positions: np.ndarray, rows: np.ndarray) -> None:
    """``target[positions] = rows``, as one strided copy when the positions are evenly spaced.

    DistributedSampler deals the rows of a predict to the ranks in turn, so a rank's rows sit every
    ``world_size`` places: a strided slice copies them several times faster than fancy indexing,
    which copies row by row.
    """
    steps = np.diff(positions)
    if len(positions) > 1 and steps[0] > 0 and (steps == steps[0]).all():
        target[positions[0] : positions[-1] + 1 : steps[0]] = rows
    else:
        target[positions] = rows


def shard_positions(build: CatalogBuild, shards: list[Shard]) -> list[np.ndarray]:
    """Where each shard's rows go in ``build``'s catalog, once every expected row is known to come
    from exactly one shard entry (a one-line error naming the missing and repeated counts if not)."""
    positions = [build.positions(shard.row_ids) for shard in shards]
    counts = np.bincount(np.concatenate(positions), minlength=len(build.rows)) if positions else np.zeros(len(build.rows), int)
    build.require_each_once(int((counts == 0).sum()), int((counts > 1).sum()))
    return positions


def write_catalog(
    path: Path,
    expected_rows: np.ndarray,
    shards: list[Shard],
    table: ProductTable,
    manifest: dict,
    block_bytes: int = BLOCK_BYTES,
    subspaces: PairSubspaces | None = None,
    products: Path | None = None,
    positions: list[np.ndarray] | None = None,
) -> Path:
    """Merge shards into a catalog folder, block by block in row-id order, and publish it atomically
    (with a type-aware model's ``subspaces``, published in the same rename; ``products``: a
    ``products.tsv`` of these rows to copy, see :meth:`CatalogBuild.publish`; ``positions``: the
    shards' :func:`shard_positions`, where the caller has checked them already).

    Every expected row must come from exactly one shard entry, which is verified before anything is
    written. Memory holds two blocks (``block_bytes`` each: the merged rows and one read) however
    large the catalog: shards are read with plain reads and the output written sequentially, not
    through memory maps whose pages would count as the process's own.
    """
    build = CatalogBuild(path, expected_rows, shards[0].dim)
    positions = shard_positions(build, shards) if positions is None else positions
    with build:
        block = max(1, block_bytes // (4 * build.dim))
        merged, read = (np.empty((min(block, len(build.rows)), build.dim), dtype=np.float32) for _ in range(2))
        for start in range(0, len(build.rows), block):
            stop = min(start + block, len(build.rows))
            for shard, pos in zip(shards, positions):
                lo, hi = np.searchsorted(pos, [start, stop])
                if hi > lo:
                    scatter_rows(merged, pos[lo:hi] - start, shard.read(int(lo), int(hi), read))
            build.write(np.arange(start, stop), merged[: stop - start])
        return build.publish(table, manifest, subspaces, products)


def merge_catalogs(
    output_dir: Path,
    expected_rows: np.ndarray,
    shards: dict[str, list[Shard]],
    table: ProductTable,
    manifests: dict[str, dict],
    subspaces: PairSubspaces | None = None,
    products: Path | None = None,
) -> dict[str, Path]:
    """Merge each kind's shards into ``output_dir / kind``, the kinds in parallel threads, once the
    shards of every kind hold each expected row exactly once (so a failed check writes nothing).

    Both catalogs list the same products, so their ``products.tsv`` is copied into each: ``products``
    where given (the store's own, for a catalog of the whole store), else written once in a
    temporary folder beside the catalogs: writing it is Python-bound, 3 to 5 us a row, and two
    threads writing it at once would hold the GIL in turn. A type-aware model's ``subspaces`` go into
    the ``compatible`` catalog.
    """
    # every kind's shards checked before anything is written; the merges reuse the positions
    positions = {
        kind: shard_positions(CatalogBuild(Path(output_dir) / kind, expected_rows, part[0].dim), part) for kind, part in shards.items()
    }
    with building(Path(output_dir) / "products") as scratch:  # removed after, or by the next merge if killed
        if products is None:
            products = scratch / "products.tsv"
            table.write_tsv(products, np.sort(np.asarray(expected_rows, dtype=np.int64)))

        def merge(kind: str) -> Path:
            pair_subspaces = subspaces if kind == "compatible" else None
            return write_catalog(
                Path(output_dir) / kind,
                expected_rows,
                shards[kind],
                table,
                manifests[kind],
                subspaces=pair_subspaces,
                products=products,
                positions=positions[kind],
            )

        with ThreadPoolExecutor(len(shards), thread_name_prefix="catalog-merge") as pool:
            written = dict(zip(shards, pool.map(merge, shards)))
        shutil.rmtree(scratch)
    return written
