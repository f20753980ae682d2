"""Shop the Look (Pinterest, CVPR 2019): ``fashion.json`` and ``fashion-cat.json``.

* ``fashion.json``: one JSON object per line, ``{"product", "scene", "bbox": [left, top, right, bottom]}``
  normalized. The corners are turned into the ``x, y, w, h`` boxes used everywhere else here.
* ``fashion-cat.json``: ``{product: "Apparel & Accessories|Clothing|Pants"}``; the category is the
  last component of the path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ctl_lightning.data.formats.common import (
    ParseResult,
    RowPolicy,
    RowRejected,
    check_box,
    load_json_mapping,
    parse_coordinate,
    parse_label,
    read_text_lines,
    with_records,
)
from ctl_lightning.errors import DataFormatError


@dataclass(frozen=True)
class StlProduct:
    """A product seen in a scene, with its box in the scene as normalized ``x, y, w, h``."""

    product: str
    scene: str
    x: float
    y: float
    w: float
    h: float


def _parse_product(obj: object) -> StlProduct:
    if not isinstance(obj, dict):
        raise RowRejected("malformed row", f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("product", "scene", "bbox") if k not in obj]
    if missing:
        raise RowRejected("wrong number of fields", f"missing {', '.join(missing)}")
    bbox = obj["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise RowRejected("wrong number of fields", f"bbox must be [left, top, right, bottom], got {bbox!r}")
    left, top, right, bottom = (parse_coordinate(v, n) for v, n in zip(bbox, ("left", "top", "right", "bottom")))
    x, y, w, h = check_box(left, top, right - left, bottom - top)
    product, scene = str(obj["product"]).strip(), str(obj["scene"]).strip()
    if not product or not scene:
        raise RowRejected("empty signature")
    return StlProduct(product, scene, x, y, w, h)


def read_stl_products(path: str | Path, on_error: str = "raise") -> ParseResult[StlProduct]:
    """Read ``fashion.json`` (JSON lines) into scene/product pairs."""
    path = Path(path)
    policy = RowPolicy(path, on_error)
    records = []
    n_lines = 0
    for number, text in read_text_lines(path):
        n_lines += 1
        try:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as error:
                raise RowRejected("invalid JSON", error.msg) from None
            records.append(_parse_product(obj))
        except RowRejected as rejected:
            policy.reject(number, rejected)
    if n_lines == 0:
        raise DataFormatError(path, None, "file is empty")
    return with_records(ParseResult(path, records, policy.skipped), "row")


def read_stl_categories(path: str | Path, on_error: str = "raise") -> ParseResult[tuple[str, str]]:
    """Read ``fashion-cat.json`` into ``(product, category)`` pairs; the category is the path's last part."""
    path = Path(path)
    data = load_json_mapping(path, "product to category path", "product")
    policy = RowPolicy(path, on_error)
    pairs = []
    for product, category_path in data.items():
        try:
            pairs.append((product, parse_label(str(category_path or "").split("|")[-1])))
        except RowRejected as rejected:
            policy.reject_entry(product, rejected, subject=f"product {product}")
    return with_records(ParseResult(path, pairs, policy.skipped), "product")
