"""Pictures of recommendations: the query, then the ranked items with category and score.

Product pictures come from the product store the catalog was built from (no JPEG decoding); a
product whose store is gone, damaged or rebuilt from other data is cropped from its source image
instead, and :attr:`Thumbnails.problem` says why, so that the fallback is never silent.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ctl_lightning.data.crops import crop_square, to_rgb
from ctl_lightning.data.store import ProductStore
from ctl_lightning.errors import CtlError
from ctl_lightning.io import write_bytes_atomic
from ctl_lightning.retrieval.recommend import Recommendation, Recommender

TILE = 128
LABEL = 34
PAD = 8


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


class Thumbnails:
    """Product pictures by row id, from the store when it is there."""

    def __init__(self, store_path: str | Path | None, fingerprint: str | None = None):
        self.store: ProductStore | None = None
        self.problem: str | None = None
        if not store_path or not Path(store_path).is_dir():
            self.problem = f"product store {store_path} not found (if the data moved, pass --data-root)"
            return
        try:
            store = ProductStore.open(store_path)
        except CtlError as error:
            self.problem = str(error)
            return
        if fingerprint and store.fingerprint != fingerprint:
            self.problem = f"{store_path}: the product store was rebuilt from other data since the catalog was made"
        else:
            self.store = store

    @classmethod
    def of(cls, recommender: Recommender) -> Thumbnails:
        """The pictures of a recommender's catalogs, from the store they were made from."""
        return cls(recommender.store_path(), recommender.similar.manifest["data"].get("fingerprint"))

    def get(self, entry: dict) -> Image.Image:
        if self.store is not None and entry.get("row_id") is not None and entry["row_id"] < len(self.store):
            array = self.store.images[int(entry["row_id"])]
            return Image.fromarray(np.asarray(array)).resize((TILE, TILE), Image.BILINEAR)
        try:
            with Image.open(entry["image"]) as image:
                return Image.fromarray(crop_square(to_rgb(image), entry.get("box"), TILE))
        except (OSError, TypeError, KeyError):
            return Image.new("RGB", (TILE, TILE), (235, 235, 235))


def render_recommendations(recommendations: Sequence[Recommendation], thumbnails: Thumbnails, path: str | Path) -> Path:
    """One row per recommendation: the query (outlined), then its items; saved as PNG at ``path``."""
    columns = 1 + max(len(r.items) for r in recommendations)
    width = PAD + columns * (TILE + PAD)
    height = PAD + len(recommendations) * (TILE + LABEL + PAD + 16)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    small, title = _font(11), _font(13)
    for r, rec in enumerate(recommendations):
        top = PAD + r * (TILE + LABEL + PAD + 16)
        query = rec.query
        label = query["category"]
        if query.get("inferred_category"):
            label = f"{label}? {query['inferred_category']['confidence']:.0%}"
        draw.text(
            (PAD, top),
            f"{rec.mode}: query {query.get('row_id') if query.get('row_id') is not None else Path(str(query.get('image'))).name}",
            fill=(0, 0, 0),
            font=title,
        )
        tiles = [(thumbnails.get(query), label, (200, 30, 45))]
        tiles += [(thumbnails.get(item), f"{item['category']}\n{item['score']:.3f}", (180, 180, 180)) for item in rec.items]
        for c, (image, text, outline) in enumerate(tiles):
            left = PAD + c * (TILE + PAD)
            canvas.paste(image, (left, top + 16))
            draw.rectangle([left - 1, top + 15, left + TILE, top + 16 + TILE], outline=outline, width=2 if c == 0 else 1)
            draw.multiline_text((left, top + 18 + TILE), text[:40], fill=(0, 0, 0), font=small, spacing=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = BytesIO()
    canvas.save(png, format="PNG")
    write_bytes_atomic(path, png.getvalue())
    return path
