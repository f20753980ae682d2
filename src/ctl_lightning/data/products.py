"""The product metadata table: one row per product, addressed by row id everywhere downstream.

Row ids are the link between pixels, embeddings and metadata. The seed system lost that link when a
shuffled DataLoader reordered embeddings; here every batch, embedding and catalog carries row ids and
metadata is looked up by them, never by position in a loader.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctl_lightning.errors import DataFormatError


@dataclass(frozen=True)
class ProductSpec:
    """A product to put in the store: where its pixels are and what it is."""

    key: str  # unique product key, e.g. ``signature@x,y,w,h``
    group: str  # outfit signature (CTL) or scene signature (STL)
    category: str
    split: str  # train / test / catalog
    image_path: str  # the image file the product's box is cut from
    box: tuple[float, float, float, float] | None  # normalized x, y, w, h; None: the whole image
    style: str = ""  # planted style of synthetic data, for evaluation only


# products.tsv of stores and catalogs; its "source" column is the image path (ProductSpec.image_path),
# named so on disk since the first stores and catalogs were written.
TABLE_COLUMNS = ("row_id", "key", "group", "category", "split", "source", "x", "y", "w", "h", "style")


class ProductTable:
    """Column arrays over the store's rows; ``row_id`` equals the row's position in the store."""

    def __init__(self, specs: Sequence[ProductSpec]):
        self.keys = np.array([s.key for s in specs], dtype=object)
        self.groups = np.array([s.group for s in specs], dtype=object)
        self.categories = np.array([s.category for s in specs], dtype=object)
        self.splits = np.array([s.split for s in specs], dtype=object)
        self.image_paths = np.array([s.image_path for s in specs], dtype=object)
        self.boxes = np.array([s.box if s.box is not None else (np.nan,) * 4 for s in specs], dtype=np.float64).reshape(-1, 4)
        self.styles = np.array([s.style for s in specs], dtype=object)
        self._row_of_key = {k: i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def positions(self) -> np.ndarray:
        """``0 .. len - 1``, every row of this table. For a store's table these are its row ids; a
        catalog's table lists only its products, whose store row ids are ``Catalog.row_ids``."""
        return np.arange(len(self), dtype=np.int64)

    def row_of(self, key: str) -> int | None:
        return self._row_of_key.get(key)

    def rows_in_split(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def spec(self, row: int) -> ProductSpec:
        box = None if np.isnan(self.boxes[row]).any() else tuple(float(v) for v in self.boxes[row])
        return ProductSpec(
            str(self.keys[row]),
            str(self.groups[row]),
            str(self.categories[row]),
            str(self.splits[row]),
            str(self.image_paths[row]),
            box,
            str(self.styles[row]),
        )

    def write_tsv(self, path: Path, rows: Sequence[int] | None = None) -> None:
        """Write the table (or ``rows`` of it, in that order) column-wise: catalogs of 100k rows in a blink."""
        rows = self.positions if rows is None else np.asarray(rows, dtype=np.int64)
        boxes = self.boxes[rows]
        has_box = ~np.isnan(boxes).any(axis=1)
        box_columns = [[f"{v:.7f}" if ok else "" for v, ok in zip(boxes[:, j].tolist(), has_box)] for j in range(4)]
        columns = [
            rows.astype(str),
            self.keys[rows],
            self.groups[rows],
            self.categories[rows],
            self.splits[rows],
            self.image_paths[rows],
            *box_columns,
            self.styles[rows],
        ]
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(TABLE_COLUMNS)
            writer.writerows(zip(*columns))

    @classmethod
    def read_tsv(cls, path: Path) -> tuple[ProductTable, np.ndarray]:
        """Read a table written by :meth:`write_tsv`; returns it with the row ids it lists."""
        specs, row_ids = [], []
        line = 1
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                reader = csv.reader(handle, delimiter="\t")
                header = next(reader, None)
                if header is None or tuple(header) != TABLE_COLUMNS:
                    raise DataFormatError(path, 1, f"expected columns {', '.join(TABLE_COLUMNS)}")
                for line, row in enumerate(reader, start=2):
                    if len(row) != len(TABLE_COLUMNS):
                        raise DataFormatError(path, line, f"expected {len(TABLE_COLUMNS)} fields, got {len(row)}")
                    box = None if row[6] == "" else tuple(float(v) for v in row[6:10])
                    row_ids.append(int(row[0]))
                    specs.append(ProductSpec(row[1], row[2], row[3], row[4], row[5], box, row[10]))  # type: ignore[arg-type]
        except FileNotFoundError:
            raise DataFormatError(path, None, "file not found") from None
        except (UnicodeDecodeError, ValueError, csv.Error) as error:  # not UTF-8, a bad number, a NUL byte
            raise DataFormatError(path, line, f"damaged row ({error})") from None
        return cls(specs), np.asarray(row_ids, dtype=np.int64)
