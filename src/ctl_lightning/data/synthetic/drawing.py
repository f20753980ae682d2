"""Drawing synthetic products: a silhouette per category, filled with its style's look.

Each item gets its own variation (colour jitter, pattern phase and period, shape proportions,
pixel noise), so that two items of one style are alike but never identical.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ctl_lightning.data.synthetic.styles import PALETTE, SILHOUETTE_OF, Style

# Width / height of each silhouette's bounding box.
ASPECT = {
    "top": 1.0,
    "coat": 0.85,
    "dress": 0.7,
    "pants": 0.55,
    "shorts": 1.0,
    "skirt": 0.85,
    "shoes": 1.7,
    "handbag": 1.1,
    "hat": 1.4,
    "sunglasses": 2.4,
    "necklace": 0.9,
    "earrings": 0.8,
    "watch": 0.5,
    "scarf": 0.45,
}


def _poly(draw: ImageDraw.ImageDraw, points, w: int, h: int, fill: int = 255) -> None:
    draw.polygon([(x * (w - 1), y * (h - 1)) for x, y in points], fill=fill)


def _ellipse(draw: ImageDraw.ImageDraw, box, w: int, h: int, fill: int | None = 255, width: int = 0, outline=None):
    x0, y0, x1, y1 = box
    draw.ellipse([x0 * (w - 1), y0 * (h - 1), x1 * (w - 1), y1 * (h - 1)], fill=fill, outline=outline, width=width)


def silhouette(kind: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A ``[h, w]`` float mask in [0, 1] with the outline of ``kind``; proportions vary per item."""
    image = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(image)

    def j(s=0.03):
        return float(rng.uniform(-s, s))

    if kind == "top":
        sl = 0.45 + j(0.06)
        _poly(
            draw,
            [
                (0.27, 0.12),
                (0.73, 0.12),
                (1.0, sl),
                (0.86, sl + 0.1),
                (0.74, 0.36),
                (0.74, 1),
                (0.26, 1),
                (0.26, 0.36),
                (0.14, sl + 0.1),
                (0.0, sl),
            ],
            w,
            h,
        )
        _ellipse(draw, (0.38, 0.04 + j(), 0.62, 0.22), w, h, fill=0)
    elif kind == "coat":
        _poly(
            draw,
            [
                (0.24, 0.05),
                (0.76, 0.05),
                (1.0, 0.9 + j()),
                (0.88, 0.93),
                (0.76, 0.35),
                (0.78, 1),
                (0.22, 1),
                (0.24, 0.35),
                (0.12, 0.93),
                (0.0, 0.9 + j()),
            ],
            w,
            h,
        )
        draw.line([(0.5 * w, 0.12 * h), (0.5 * w, h)], fill=0, width=max(1, w // 40))
        _poly(draw, [(0.38, 0.05), (0.5, 0.3 + j()), (0.62, 0.05)], w, h, fill=0)
    elif kind == "dress":
        waist = 0.34 + j()
        _poly(draw, [(0.36, 0.04), (0.64, 0.04), (0.66, waist), (0.96 + j(), 1), (0.04 + j(), 1), (0.34, waist)], w, h)
        _ellipse(draw, (0.42, -0.04, 0.58, 0.1), w, h, fill=0)
    elif kind in ("pants", "shorts"):
        length = 1.0 if kind == "pants" else 0.98
        flare = j(0.05)
        _poly(
            draw,
            [
                (0.12, 0.0),
                (0.88, 0.0),
                (0.9, 0.14),
                (0.98 + flare, length),
                (0.55, length),
                (0.5, 0.22),
                (0.45, length),
                (0.02 - flare, length),
                (0.1, 0.14),
            ],
            w,
            h,
        )
        draw.line([(0.12 * w, 0.1 * h), (0.88 * w, 0.1 * h)], fill=0, width=max(1, h // 40))
    elif kind == "skirt":
        hem = 0.06 + j(0.05)
        _poly(draw, [(0.3, 0.0), (0.7, 0.0), (1 - hem, 1), (hem, 1)], w, h)
        draw.line([(0.3 * w, 0.09 * h), (0.7 * w, 0.09 * h)], fill=0, width=max(1, h // 40))
    elif kind == "shoes":
        heel = 0.3 + j(0.1)
        _poly(draw, [(0.02, heel), (0.2, heel - 0.05), (0.32, 0.5), (0.62, 0.55), (0.95, 0.7), (0.98, 0.92), (0.02, 0.92)], w, h)
        draw.rectangle([0, 0.86 * h, 0.99 * w, 0.99 * h], fill=255)
    elif kind == "handbag":
        _ellipse(draw, (0.2, 0.02, 0.8, 0.7), w, h, fill=None, outline=255, width=max(2, w // 14))
        draw.rounded_rectangle([0.04 * w, 0.36 * h, 0.96 * w, 0.99 * h], radius=max(1, w // 10), fill=255)
    elif kind == "hat":
        _ellipse(draw, (0.0, 0.56 + j(), 1.0, 0.94), w, h)
        _poly(draw, [(0.28, 0.75), (0.32, 0.08), (0.68, 0.08), (0.72, 0.75)], w, h)
    elif kind == "sunglasses":
        lens = 0.42 + j(0.04)
        _ellipse(draw, (0.04, 0.25, 0.04 + lens, 0.98), w, h)
        _ellipse(draw, (0.96 - lens, 0.25, 0.96, 0.98), w, h)
        draw.line([(0.3 * w, 0.36 * h), (0.7 * w, 0.36 * h)], fill=255, width=max(2, h // 8))
        draw.line([(0.02 * w, 0.4 * h), (0.0, 0.05 * h)], fill=255, width=max(2, h // 10))
        draw.line([(0.98 * w, 0.4 * h), (w - 1, 0.05 * h)], fill=255, width=max(2, h // 10))
    elif kind == "necklace":
        _ellipse(draw, (0.08, 0.0, 0.92, 0.8), w, h, fill=None, outline=255, width=max(2, w // 12))
        _poly(draw, [(0.5, 0.66), (0.66, 0.82), (0.5, 1.0), (0.34, 0.82)], w, h)
    elif kind == "earrings":
        for cx in (0.25, 0.75):
            _ellipse(draw, (cx - 0.1, 0.0, cx + 0.1, 0.2), w, h)
            _poly(draw, [(cx, 0.15), (cx + 0.22, 0.72), (cx, 1.0), (cx - 0.22, 0.72)], w, h)
    elif kind == "watch":
        draw.rectangle([0.3 * w, 0, 0.7 * w, h - 1], fill=255)
        _ellipse(draw, (0.0, 0.5 - 0.26 / ASPECT["watch"] * 0.5, 1.0, 0.5 + 0.26 / ASPECT["watch"] * 0.5), w, h)
    elif kind == "scarf":
        _poly(draw, [(0.05, 0.0), (0.6, 0.0), (0.95, 0.88), (0.4, 0.88)], w, h)
        for k in range(6):
            x = 0.42 + k * 0.1
            draw.line([(x * w, 0.86 * h), ((x - 0.02) * w, 0.99 * h)], fill=255, width=max(1, w // 25))
    else:
        raise ValueError(f"unknown silhouette {kind!r}")
    return np.asarray(image, dtype=np.float32) / 255.0


def pattern_mask(pattern: str, w: int, h: int, period: float, phase: float) -> np.ndarray:
    """Where the style's second colour shows: a ``[h, w]`` array in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (xx + phase * period) / period, (yy + phase * period) / period

    def stripes(t):
        return (np.sin(2 * np.pi * t) > 0.2).astype(np.float32)

    if pattern == "solid":
        return np.zeros((h, w), np.float32)
    if pattern == "hstripes":
        return stripes(v)
    if pattern == "vstripes":
        return stripes(u)
    if pattern == "diagonal":
        return stripes((u + v) / 1.4)
    if pattern == "dots":
        return (((u % 1 - 0.5) ** 2 + (v % 1 - 0.5) ** 2) < 0.08).astype(np.float32)
    if pattern == "checks":
        return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    if pattern == "chevron":
        return stripes(v + 0.5 * np.abs((u % 1) - 0.5))
    if pattern == "grid":
        return (((u % 1) < 0.18) | ((v % 1) < 0.18)).astype(np.float32)
    raise ValueError(f"unknown pattern {pattern!r}")


def texture_shading(texture: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative shading around 1 that gives the fabric its feel."""
    if texture == "smooth":
        return np.ones((h, w), np.float32)
    if texture == "grain":
        return 1.0 + rng.normal(0, 0.12, size=(h, w)).astype(np.float32)
    if texture == "ribbed":
        xx = np.arange(w, dtype=np.float32)
        return np.broadcast_to(1.0 + 0.14 * np.sin(xx * 2 * np.pi / 3.0 + rng.uniform(0, 6)), (h, w)).copy()
    if texture == "mottled":
        coarse = rng.normal(0, 0.16, size=(max(2, h // 8), max(2, w // 8))).astype(np.float32)
        return 1.0 + np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))
    raise ValueError(f"unknown texture {texture!r}")


def item_size(category: str, height: int) -> tuple[int, int]:
    """Pixel size of an item drawn ``height`` pixels tall (wide items are limited by width instead)."""
    aspect = ASPECT[SILHOUETTE_OF[category]]
    if aspect > 1:
        return height, max(8, round(height / aspect))
    return max(8, round(height * aspect)), height


def render_item(category: str, style: Style, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """An RGBA image of one product of ``style``; transparent outside its silhouette."""
    kind = SILHOUETTE_OF[category]
    mask = silhouette(kind, width, height, rng)
    jitter = rng.normal(0, 9, size=3).astype(np.float32)
    main = PALETTE[style.main[category]] + jitter
    second = PALETTE[style.second[category]] + jitter
    period = style.pattern_scale * max(width, height) * rng.uniform(0.85, 1.15)
    blend = pattern_mask(style.pattern, width, height, period, rng.uniform(0, 1))[..., None]
    rgb = main * (1 - blend) + second * blend
    rgb = rgb * texture_shading(style.texture, width, height, rng)[..., None]
    rgb += rng.normal(0, 4, size=rgb.shape).astype(np.float32)
    # A darker rim keeps pale silhouettes readable against the white background.
    mask_image = Image.fromarray((mask * 255).astype(np.uint8))
    rim = (np.asarray(mask_image.filter(ImageFilter.MinFilter(3)), dtype=np.float32) / 255.0) < 0.5
    rgb[rim & (mask > 0.5)] *= 0.6
    rgba = np.dstack([np.clip(rgb, 0, 255), mask * 255]).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


# Benchmark-world items: colours come from the item's attributes (hue, saturation, lightness), shapes
# from its silhouette variant, and metal items show their stone on a gold or silver body.
VARIANT_ASPECT = (1.0, 0.8, 1.25)  # each silhouette variant has its own proportions and detail
METAL_RGB = {"gold": (212, 172, 64), "silver": (196, 200, 208)}


def hls_rgb(hue: float, light: float, sat: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hls_to_rgb(hue / 360.0, light, sat), dtype=np.float32) * 255


def variant_size(category: str, variant: int, height: int) -> tuple[int, int]:
    w, h = item_size(category, height)
    return max(8, round(w * VARIANT_ASPECT[variant])), h


def _variant_detail(mask: np.ndarray, variant: int) -> np.ndarray:
    """Where a variant's detail (a band or a placket of buttons) darkens the item."""
    h, w = mask.shape
    detail = np.zeros_like(mask)
    if variant == 1:
        detail[int(0.3 * h) : int(0.3 * h) + max(1, h // 10), :] = 1
    elif variant == 2:
        yy, xx = np.mgrid[0:h, 0:w]
        detail[(np.abs(xx - w / 2) < max(1, w // 16)) & ((yy // max(2, h // 8)) % 2 == 0)] = 1
    return detail * (mask > 0.5)


def render_attribute_item(category: str, item, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """An RGBA image of a benchmark-world :class:`~ctl_lightning.data.synthetic.world.Item`."""
    mask = silhouette(SILHOUETTE_OF[category], width, height, rng)
    colour = hls_rgb(item.hue, item.light, item.sat)
    if item.metal:  # a gold or silver body set with the item's colour in its pattern
        main, second = np.array(METAL_RGB[item.metal], np.float32), colour
    else:  # the pattern's second colour is the same hue, lighter or darker: it adds shape, not colour
        main, second = colour, hls_rgb(item.hue, item.light + (0.3 if item.light < 0.5 else -0.3), item.sat)
    period = (0.18 if item.large_pattern else 0.08) * max(width, height) * rng.uniform(0.85, 1.15)
    blend = pattern_mask(item.pattern, width, height, max(period, 3.0), rng.uniform(0, 1))
    rgb = main * (1 - blend[..., None]) + second * blend[..., None]
    rgb = rgb * texture_shading(item.texture, width, height, rng)[..., None]
    rgb[_variant_detail(mask, item.silhouette) > 0] *= 0.55
    rgb += rng.normal(0, 4, size=rgb.shape).astype(np.float32)
    mask_image = Image.fromarray((mask * 255).astype(np.uint8))
    rim = (np.asarray(mask_image.filter(ImageFilter.MinFilter(3)), dtype=np.float32) / 255.0) < 0.5
    rgb[rim & (mask > 0.5)] *= 0.6
    return Image.fromarray(np.dstack([np.clip(rgb, 0, 255), mask * 255]).astype(np.uint8), "RGBA")
