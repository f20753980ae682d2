"""Collages and scenes of the benchmark world, with the nuisances of real photos.

An outfit is planned first (look, items, boxes) from one random stream and drawn from another, so
that annotations can be written without drawing anything (``render=False``: the fast ceiling test)
and are the same either way. Nuisances, each item its own: a tinted, cluttered backdrop, a lighting
gradient, scale, position and a small rotation, a patch hiding part of some items; and a random JPEG
quality per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ctl_lightning.data.synthetic import world
from ctl_lightning.data.synthetic.drawing import render_attribute_item, variant_size
from ctl_lightning.errors import DataFormatError

MAX_ROTATION = 8.0  # degrees
OCCLUSION = 0.12  # share of items partly hidden by a patch of background clutter
OFF_LOOK = 0.10  # share of training items drawn from another look (label noise)


@dataclass(frozen=True)
class PlannedItem:
    category: str
    item: world.Item
    box: tuple[int, int, int, int]  # left, top, width, height of the (rotated) item, in pixels
    size: tuple[int, int]  # width, height before rotation
    rotation: float
    off_look: bool


@dataclass(frozen=True)
class Plan:
    look: world.Look
    items: list[PlannedItem]


def _rotated_size(w: int, h: int, degrees: float) -> tuple[int, int]:
    a = math.radians(abs(degrees))
    return math.ceil(w * math.cos(a) + h * math.sin(a)), math.ceil(w * math.sin(a) + h * math.cos(a))


def _place(category: str, variant: int, cell, rng: np.random.Generator):
    left, top, cw, ch = cell
    rotation = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    w, h = variant_size(category, variant, int(ch * rng.uniform(0.6, 0.88)))
    rw, rh = _rotated_size(w, h, rotation)
    shrink = min(1.0, cw * 0.95 / rw, ch * 0.95 / rh)
    if shrink < 1:
        w, h = max(8, int(w * shrink)), max(8, int(h * shrink))
        rw, rh = _rotated_size(w, h, rotation)
    x = left + int(rng.integers(0, max(1, cw - rw)))
    y = top + int(rng.integers(0, max(1, ch - rh)))
    return (x, y, rw, rh), (w, h), rotation


def plan_outfit(
    categories: list[str], layout, look: world.Look, rng: np.random.Generator, noisy: bool, pairs: list[tuple[int, int]]
) -> Plan:
    """Items of ``look`` in the given layout cells; with ``noisy``, some come from another look."""
    planned = []
    for category, cell in zip(categories, layout):
        off = noisy and rng.random() < OFF_LOOK
        item = world.sample_item(world.sample_look(rng, pairs) if off else look, category, rng)
        box, size, rotation = _place(category, item.silhouette, cell, rng)
        planned.append(PlannedItem(category, item, box, size, rotation, off))
    return Plan(look, planned)


def _backdrop(image: Image.Image, box, rng: np.random.Generator) -> None:
    """A tinted, cluttered backdrop behind one item, like a product photo pasted into the collage.

    Every item has its own, so the backdrop says nothing about which outfit an item belongs to (a
    tint shared by a whole collage would be a shortcut: a colour histogram would match outfits by it).
    """
    x, y, w, h = box
    tint = tuple(int(v) for v in 255 - rng.integers(0, 28, size=3))
    draw = ImageDraw.Draw(image)
    draw.rectangle([x, y, x + w - 1, y + h - 1], fill=tint)
    for _ in range(int(rng.integers(0, 3))):  # clutter: faint shapes behind the product
        x0, y0 = x + int(rng.integers(0, w)), y + int(rng.integers(0, h))
        x1, y1 = min(x + w - 1, x0 + int(rng.integers(4, max(5, w // 2)))), min(y + h - 1, y0 + int(rng.integers(4, max(5, h // 2))))
        colour = tuple(int(v) for v in rng.integers(180, 245, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)


def _occlude(image: Image.Image, box, rng: np.random.Generator) -> None:
    """A patch that hides one side of the item."""
    x, y, w, h = box
    side, share = int(rng.integers(4)), rng.uniform(0.15, 0.3)
    x0, y0, x1, y1 = x, y, x + w - 1, y + h - 1
    if side == 0:
        x1 = x + int(w * share)
    elif side == 1:
        x0 = x1 - int(w * share)
    elif side == 2:
        y1 = y + int(h * share)
    else:
        y0 = y1 - int(h * share)
    ImageDraw.Draw(image).rectangle([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(180, 245, size=3)))


def _lighting(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A linear lighting gradient in a random direction, from 0.86 to 1.08 of the original."""
    h, w = pixels.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(angle) * xx / max(w, 1) + np.sin(angle) * yy / max(h, 1) + 1) / 2
    lo, hi = sorted(rng.uniform(0.86, 1.08, size=2))
    return np.clip(pixels * (lo + (hi - lo) * t)[..., None], 0, 255)


def render(plan: Plan, canvas: int, rng: np.random.Generator) -> Image.Image:
    """Draw a planned collage (or scene) on white; each item gets its own nuisances."""
    image = Image.new("RGB", (canvas, canvas), (255, 255, 255))
    for planned in plan.items:
        w, h = planned.size
        item = render_attribute_item(planned.category, planned.item, w, h, rng)
        item = item.rotate(planned.rotation, resample=Image.BILINEAR, expand=True)
        x, y, bw, bh = planned.box
        if item.size != (bw, bh):
            item = item.resize((bw, bh), Image.BILINEAR)
        _backdrop(image, planned.box, rng)
        image.paste(item, (x, y), item)
        if rng.random() < OCCLUSION:
            _occlude(image, planned.box, rng)
        tile = np.asarray(image.crop((x, y, x + bw, y + bh)), dtype=np.float32)
        image.paste(Image.fromarray(_lighting(tile, rng).astype(np.uint8)), (x, y))
    return image


def save_jpeg(image: Image.Image, path: Path, rng: np.random.Generator) -> None:
    image.save(path, quality=int(rng.integers(55, 93)))


ATTRIBUTES_FILE = "synthetic_attributes.tsv"
LOOK_FIELDS = ("look_hue", "look_scheme", "look_key", "look_formality", "look_pattern", "look_carrier")
ITEM_FIELDS = ("hue", "sat", "light", "pattern", "large_pattern", "texture", "silhouette", "metal")
ATTRIBUTE_COLUMNS = ("product_key", "category", *LOOK_FIELDS, "off_look", *ITEM_FIELDS)


def attribute_line(key: str, planned: PlannedItem, look: world.Look) -> str:
    item = planned.item
    values = [
        key,
        planned.category,
        *(str(v) for v in (look.hue, look.scheme, look.key, look.formality, look.pattern, look.carrier)),
        str(int(planned.off_look)),
        f"{item.hue:.3f}",
        f"{item.sat:.4f}",
        f"{item.light:.4f}",
        item.pattern,
        str(int(item.large_pattern)),
        item.texture,
        str(item.silhouette),
        item.metal,
    ]
    return "\t".join(values)


@dataclass(frozen=True)
class Attributes:
    """One product's latent truth, read back for evaluation (ceilings, similar-product truth)."""

    category: str
    look: world.Look
    off_look: bool
    item: world.Item


def read_attributes(path: Path) -> dict[str, Attributes]:
    """``product_key -> Attributes`` from a benchmark world's ``synthetic_attributes.tsv``."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or tuple(lines[0].split("\t")) != ATTRIBUTE_COLUMNS:
        raise DataFormatError(path, 1, f"expected columns {', '.join(ATTRIBUTE_COLUMNS)}")
    out = {}
    for text in lines[1:]:
        f = text.split("\t")
        look = world.Look(*(int(v) for v in f[2:8]))
        item = world.Item(float(f[9]), float(f[10]), float(f[11]), f[12], f[13] == "1", f[14], int(f[15]), f[16])
        out[f[0]] = Attributes(f[1], look, f[8] == "1", item)
    return out
