"""The latent styles planted in the synthetic dataset.

A style fixes, for every category, a main and a second colour, plus a pattern, a pattern scale and
a texture shared by all its categories. Colours are drawn per category from a separate permutation
of the palette, so a style pairs *different* colours across categories (a teal top goes with mustard
trousers): compatibility is not colour identity and must be learned. Within one category every style
has its own main colour, which makes same-style items of a category look alike: that is the ground
truth for similar products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CTL_LABELS = (
    "Shoes",
    "Handbags",
    "Shirts & Tops",
    "Pants",
    "Coats & Jackets",
    "Jewelry",
    "Hats",
    "Sunglasses",
    "Skirts",
    "Dresses",
    "Shorts",
    "Watches",
    "Scarves & Shawls",
)

# STL categories with their real taxonomy paths (fashion-cat.json stores the path).
STL_CATEGORY_PATHS = {
    "Shoes": "Apparel & Accessories|Shoes",
    "Shirts & Tops": "Apparel & Accessories|Clothing|Shirts & Tops",
    "Pants": "Apparel & Accessories|Clothing|Pants",
    "Handbags, Wallets & Cases": "Apparel & Accessories|Handbags, Wallets & Cases",
    "Coats & Jackets": "Apparel & Accessories|Clothing|Outerwear|Coats & Jackets",
    "Sunglasses": "Apparel & Accessories|Clothing Accessories|Sunglasses",
    "Shorts": "Apparel & Accessories|Clothing|Shorts",
    "Skirts": "Apparel & Accessories|Clothing|Skirts",
    "Earrings": "Apparel & Accessories|Jewelry|Earrings",
    "Necklaces": "Apparel & Accessories|Jewelry|Necklaces",
}

# Which silhouette draws each category (CTL labels and STL categories).
SILHOUETTE_OF = {
    "Shoes": "shoes",
    "Handbags": "handbag",
    "Handbags, Wallets & Cases": "handbag",
    "Shirts & Tops": "top",
    "Pants": "pants",
    "Coats & Jackets": "coat",
    "Jewelry": "necklace",
    "Necklaces": "necklace",
    "Earrings": "earrings",
    "Hats": "hat",
    "Sunglasses": "sunglasses",
    "Skirts": "skirt",
    "Dresses": "dress",
    "Shorts": "shorts",
    "Watches": "watch",
    "Scarves & Shawls": "scarf",
}

# Sixteen colours that stay distinct after JPEG compression and a 64 px resize; none is white,
# which is the collage background.
PALETTE = np.array(
    [
        (196, 30, 45),  # red
        (238, 118, 32),  # orange
        (232, 196, 40),  # mustard
        (56, 150, 64),  # green
        (26, 112, 118),  # teal
        (36, 64, 156),  # navy
        (112, 58, 160),  # purple
        (232, 112, 164),  # pink
        (118, 70, 38),  # brown
        (206, 184, 140),  # beige
        (34, 34, 38),  # black
        (134, 134, 140),  # grey
        (140, 196, 232),  # sky
        (96, 122, 36),  # olive
        (128, 18, 58),  # burgundy
        (252, 150, 118),  # coral
    ],
    dtype=np.float32,
)

PATTERNS = ("solid", "hstripes", "vstripes", "diagonal", "dots", "checks", "chevron", "grid")
TEXTURES = ("smooth", "grain", "ribbed", "mottled")


@dataclass(frozen=True)
class Style:
    """One latent style; ``main`` and ``second`` map a category to a colour index in :data:`PALETTE`."""

    index: int
    pattern: str
    pattern_scale: float
    texture: str
    main: dict[str, int]
    second: dict[str, int]


def make_styles(n_styles: int, categories: tuple[str, ...], rng: np.random.Generator) -> list[Style]:
    """Draw ``n_styles`` styles; with ``n_styles <= len(PALETTE)`` main colours are unique per category."""
    if n_styles < 2:
        raise ValueError(f"need at least 2 styles, got {n_styles}")
    n_colours = len(PALETTE)
    main = {c: rng.permutation(np.resize(np.arange(n_colours), max(n_styles, n_colours))) for c in categories}
    # The second colour differs from the main one: shift the main colour by a random non-zero offset.
    offsets = {c: rng.integers(3, n_colours - 2, size=n_styles) for c in categories}
    patterns = np.resize(rng.permutation(len(PATTERNS)), n_styles)
    textures = rng.integers(0, len(TEXTURES), size=n_styles)
    scales = rng.choice([0.09, 0.16], size=n_styles)
    return [
        Style(
            index=s,
            pattern=PATTERNS[patterns[s]],
            pattern_scale=float(scales[s]),
            texture=TEXTURES[textures[s]],
            main={c: int(main[c][s]) for c in categories},
            second={c: int((main[c][s] + offsets[c][s]) % n_colours) for c in categories},
        )
        for s in range(n_styles)
    ]
