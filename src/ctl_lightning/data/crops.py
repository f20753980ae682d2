"""From a source image to a product's square crop: the one conversion the store, the image
embedder and the recommendation pictures share, so a product looks the same to each of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

BACKGROUND = (255, 255, 255)  # the collages' background: what transparency and padding become


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any input mode; transparency is composited over white, the collage background."""
    # A PNG transparency chunk (tRNS) can mark a colour transparent in P, L and RGB images alike.
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    # 16-bit grayscale (I;16, I;16B from TIFFs, I from older Pillow's PNGs): Pillow's own conversion
    # clips at 255 and turns it white, so scale it to 8 bits first.
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        image = Image.fromarray((values >> 8).astype(np.uint8), "L")
    return image.convert("RGB") if image.mode != "RGB" else image


def crop_square(image: Image.Image, box: Sequence[float] | None, size: int) -> np.ndarray:
    """Crop a normalized ``x, y, w, h`` box, pad it to a square with white, resize to ``size``.

    Padding instead of stretching keeps each silhouette's proportions: trousers stay long and
    sunglasses wide, which is much of what tells categories apart.
    """
    if box is not None:
        W, H = image.size
        x, y, w, h = box
        # A thin box on the right or bottom border can round to a start of W (or H): keep one pixel
        # inside the image, or the crop would be empty and the product a blank white square.
        left, top = min(round(x * W), W - 1), min(round(y * H), H - 1)
        right = max(left + 1, min(round((x + w) * W), W))
        bottom = max(top + 1, min(round((y + h) * H), H))
        image = image.crop((left, top, right, bottom))
    side = max(image.size)
    square = Image.new("RGB", (side, side), BACKGROUND)
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return np.array(square.resize((size, size), Image.BILINEAR), dtype=np.uint8)
