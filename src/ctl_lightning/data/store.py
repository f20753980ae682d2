"""The product store: every product cropped, converted and resized once, as uint8 ``[N, H, W, 3]``.

The seed system decoded and resized three JPEGs for every triplet, which made an epoch take 7 hours.
Here ``prepare`` decodes each source image once; training and predict read the memory-mapped array
by row id and never touch a JPEG.

On disk (``<store>/``): ``images.u8`` (raw uint8, shape in the manifest), ``products.tsv`` (the
metadata table) and ``manifest.json`` (fingerprint, shape, skipped items). The folder is built under
a temporary name and renamed when complete, so a half-written store is never read as complete. It is
rebuilt only when the fingerprint (annotations, image file stats, size) changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ctl_lightning.data.crops import crop_square, to_rgb
from ctl_lightning.data.products import ProductSpec, ProductTable
from ctl_lightning.errors import CtlError
from ctl_lightning.io import (
    building,
    exclusive_lock,
    read_json_object,
    remove_leftovers,
    replace_dir,
    reserve,
    write_json,
)
from ctl_lightning.workers import worker_pool

log = logging.getLogger(__name__)

STORE_VERSION = 1
MANIFEST = "manifest.json"
IMAGES = "images.u8"
TABLE = "products.tsv"


def _decode(job: tuple[str, list, int]) -> tuple[str, np.ndarray | None, str]:
    """Decode one source image and crop all its products; on failure return the reason instead."""
    source, boxes, size = job
    try:
        with Image.open(source) as opened:
            image = to_rgb(opened)
            image.load()
        return source, np.stack([crop_square(image, box, size) for box in boxes]), ""
    except FileNotFoundError:
        return source, None, "missing image"
    except Image.DecompressionBombError as error:
        return source, None, f"image too large ({error})"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        return source, None, f"corrupt image ({type(error).__name__}: {error})"


def by_image(specs: Sequence[ProductSpec]) -> dict[str, list[ProductSpec]]:
    """Products grouped by image file, images in order of first appearance: each image is decoded
    once, and a store's rows follow this order (minus products of unreadable images)."""
    groups: dict[str, list[ProductSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.image_path, []).append(spec)
    return groups


def fingerprint(specs: Sequence[ProductSpec], size: int) -> str:
    """Hash of what the store depends on: products, image file stats (size, mtime) and crop size."""
    digest = hashlib.sha256(f"store-v{STORE_VERSION}|size={size}".encode())
    stats: dict[str, str] = {}
    names = [f.name for f in fields(ProductSpec)]
    for spec in specs:
        # The fields as dataclasses.astuple gives them, without its deep copy of each (which made
        # this 21 s for the 485,230 products of the release-scale benchmark).
        digest.update("\x1f".join([str(getattr(spec, name)) for name in names]).encode() + b"\x1e")
        if spec.image_path not in stats:
            try:
                st = os.stat(spec.image_path)
                stats[spec.image_path] = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stats[spec.image_path] = "missing"
            digest.update(f"{spec.image_path}={stats[spec.image_path]}".encode())
    return digest.hexdigest()[:20]


@dataclass
class BuildStats:
    """What a build kept and dropped; stored in the manifest (its ``report`` field) and printed after ``prepare``."""

    products: int = 0
    excluded_products: int = 0
    bad_images: dict[str, str] = field(default_factory=dict)  # path -> reason
    annotation_skips: dict[str, dict[str, int]] = field(default_factory=dict)  # file -> reason -> count
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"{self.products} products stored in {self.seconds:.1f} s"]
        for path, reasons in self.annotation_skips.items():
            # Most frequent first, as the readers' own skip summaries print them.
            detail = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items(), key=lambda item: -item[1]))
            out.append(f"skipped annotation rows in {path}: {detail}")
        if self.bad_images:
            out.append(f"excluded {self.excluded_products} products from {len(self.bad_images)} unreadable images:")
            out += [f"  {path}: {reason}" for path, reason in sorted(self.bad_images.items())]
        return out


def _read_fully(descriptor: int, view: memoryview, offset: int, path: Path) -> None:
    """Fill ``view`` from ``offset``: one ``preadv`` unless the kernel returns less (reads of over 2 GiB);
    a file that ends first is an error, never a buffer left holding an earlier read's crops."""
    done = 0
    while done < len(view):
        got = os.preadv(descriptor, [view[done:]], offset + done)
        if got == 0:
            raise CtlError(f"{path} ends at byte {offset + done}, before the {len(view)} bytes from {offset} that were asked for")
        done += got


class ProductStore:
    """A built store: the metadata table and a lazily opened memory map of the crops."""

    def __init__(self, path: Path, manifest: dict, table: ProductTable):
        self.path = Path(path)
        self.manifest = manifest
        self.table = table
        self._images: np.memmap | None = None
        self._fd: int | None = None  # file descriptor for read(), opened on first use in each process

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    def __len__(self) -> int:
        return len(self.table)

    @property
    def images(self) -> np.memmap:
        """``[N, H, W, 3]`` uint8, memory-mapped read-only; opened on first use in each process."""
        if self._images is None:
            # Each DataLoader worker maps the file by path: if the store was rebuilt since this
            # object read its table, the rows would silently no longer match their metadata.
            try:
                current = json.loads((self.path / MANIFEST).read_text(encoding="utf-8")).get("fingerprint")
            except (OSError, ValueError):
                current = None
            if current != self.fingerprint:
                raise CtlError(f"{self.path}: the product store was rebuilt or removed while in use; open it again")
            n = len(self.table)
            self._images = np.memmap(self.path / IMAGES, dtype=np.uint8, mode="r", shape=(n, self.size, self.size, 3))
        return self._images

    def read(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Crops of ``rows`` (any order), as a new ``[len(rows), H, W, 3]`` uint8 array, or into ``out``
        (writable, C-contiguous, that shape): a buffer reused across reads of ascending rows takes no
        fresh page faults (other orders go through a scratch array).

        Rows are read in ascending order, one ``preadv`` per run of consecutive rows. Unlike slicing
        the memory map, reading does not leave the file's pages mapped in this process, so its
        resident memory stays flat however many products it reads (training, the feature cache,
        predict); the kernel's page cache still keeps them for the next read. Ascending rows (what
        the training collates and predict ask for) are read straight into the result; others into
        a scratch array first, then put in the order asked for. Copying rows out of the memory map
        and unmapping them after each batch was measured too, and is slower (NOTES.md).
        """
        rows = np.asarray(rows, dtype=np.int64)
        shape = (len(rows), self.size, self.size, 3)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"out must be a writable C-contiguous uint8 array of shape {shape}, got {out.dtype} {out.shape} {out.flags}")
        if len(rows) == 0:
            return out
        ascending = bool(np.all(rows[1:] >= rows[:-1]))
        order = None if ascending else np.argsort(rows, kind="stable")
        ordered = rows if order is None else rows[order]
        if ordered[0] < 0 or ordered[-1] >= len(self):
            raise IndexError(f"row ids must be in 0..{len(self) - 1}")
        _ = self.images  # checks that the store is still the one this object describes
        row_bytes = self.size * self.size * 3
        target = out if order is None else np.empty_like(out)
        runs = np.flatnonzero(np.diff(ordered) != 1) + 1
        descriptor = self._descriptor()
        for start, stop in zip(np.r_[0, runs], np.r_[runs, len(rows)]):
            _read_fully(descriptor, memoryview(target[start:stop]).cast("B"), int(ordered[start]) * row_bytes, self.path / IMAGES)
        if order is not None:
            out[order] = target
        return out

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path / IMAGES, os.O_RDONLY)
        return self._fd

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __getstate__(self) -> dict:
        # Pickling a memmap would copy the whole array into every DataLoader worker; reopen instead.
        state = self.__dict__.copy()
        state["_images"] = None
        state["_fd"] = None
        return state

    @classmethod
    def open(cls, path: str | Path) -> ProductStore:
        """The store at ``path``, checked against its manifest; a damaged one is a one-line error."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise CtlError(f"{path}: not a product store (no {MANIFEST}); run `ctl-data prepare`")
        manifest = read_json_object(manifest_path, {"fingerprint": str, "size": int, "count": int, "report": dict})
        if manifest["size"] < 8:
            raise CtlError(f"{manifest_path}: size must be at least 8 px, got {manifest['size']}")
        table, row_ids = ProductTable.read_tsv(path / TABLE)
        if not np.array_equal(row_ids, np.arange(len(table))) or len(table) != manifest["count"]:
            raise CtlError(f"{path / TABLE}: row ids are not 0..{manifest['count'] - 1} in order")
        expected = len(table) * manifest["size"] ** 2 * 3
        actual = (path / IMAGES).stat().st_size if (path / IMAGES).is_file() else None
        if actual != expected:
            raise CtlError(
                f"{path / IMAGES}: size does not match {len(table)} crops of {manifest['size']} px ({actual} bytes, expected {expected})"
            )
        return cls(path, manifest, table)

    @classmethod
    def current(cls, path: Path, fp: str) -> ProductStore | None:
        """The store at ``path`` if it exists and was built from the same inputs, else None."""
        try:
            manifest = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
            # A store damaged after its build (images.u8 deleted or cut short) is rebuilt, not an error.
            return cls.open(path) if manifest.get("fingerprint") == fp else None
        except (OSError, ValueError, CtlError):
            return None

    @classmethod
    def ensure(
        cls,
        specs: Sequence[ProductSpec],
        path: str | Path,
        size: int,
        annotation_skips: dict[str, dict[str, int]] | None = None,
        workers: int = 0,
    ) -> ProductStore:
        """Open the store at ``path``, building it first if it is missing or stale."""
        path = Path(path)
        annotation_skips = annotation_skips or {}
        fp = fingerprint(specs, size)
        store = cls.current(path, fp)
        if store is not None and store.manifest["report"]["annotation_skips"] == annotation_skips:
            remove_leftovers(path)  # a build killed after its rename leaves the old store's folder
            return store
        with exclusive_lock(path):
            store = cls.current(path, fp)  # another process may have built it while we waited
            if store is None:
                store = cls._build(specs, path, size, fp, annotation_skips, workers)
            elif store.manifest["report"]["annotation_skips"] != annotation_skips:
                # Rows skipped beside unchanged products leave the crops valid, but the report must
                # count them or they would be dropped silently.
                store.manifest["report"]["annotation_skips"] = annotation_skips
                write_json(path / MANIFEST, store.manifest)
        return store

    @classmethod
    def _build(cls, specs, path: Path, size: int, fp: str, annotation_skips, workers: int) -> ProductStore:
        if size < 8:
            raise CtlError(f"image size must be at least 8 px, got {size}")
        start = time.perf_counter()
        by_source = by_image(specs)
        capacity = max(1, len(specs))
        crop_bytes = size * size * 3
        with building(path, capacity * crop_bytes) as tmp:
            reserve(tmp / IMAGES, capacity * crop_bytes)  # written through a memory map: no sparse page may be left
            images = np.memmap(tmp / IMAGES, dtype=np.uint8, mode="r+", shape=(capacity, size, size, 3))
            kept: list[ProductSpec] = []
            stats = BuildStats(annotation_skips=annotation_skips)
            jobs = [(source, [s.box for s in group], size) for source, group in by_source.items()]
            with worker_pool(workers or max(1, os.cpu_count() or 1)) as pool:
                decoded = pool.map(_decode, jobs, chunksize=32)
                for source, crops, reason in tqdm(decoded, total=len(jobs), desc=f"prepare {path.name}", unit="img"):
                    group = by_source[source]
                    if crops is None:
                        stats.bad_images[source] = reason
                        stats.excluded_products += len(group)
                        continue
                    images[len(kept) : len(kept) + len(group)] = crops
                    kept.extend(group)
            images.flush()
            del images
            if not kept:
                raise CtlError(f"no product image could be read for {path}; first problems: {list(stats.bad_images.items())[:3]}")
            os.truncate(tmp / IMAGES, len(kept) * crop_bytes)
            table = ProductTable(kept)
            table.write_tsv(tmp / TABLE)
            stats.products = len(kept)
            stats.seconds = time.perf_counter() - start
            manifest = dict(version=STORE_VERSION, fingerprint=fp, size=size, count=len(kept), report=asdict(stats))
            write_json(tmp / MANIFEST, manifest)
            replace_dir(tmp, path)
        for line in stats.lines():
            log.info(line)
        return cls.open(path)
