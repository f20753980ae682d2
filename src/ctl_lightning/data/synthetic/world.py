"""The benchmark world: outfits whose compatibility follows rules over item attributes.

An outfit has a *look*: a base hue, a harmony scheme, a lightness key (dark or light), a formality
level, a pattern motif and the role that may wear it loud (the pattern budget: at most one role). Each category plays a *role* in the look
(tops carry the base hue, bottoms stay neutral, shoes and bags share the accent, jewellery and watches
take a metal that follows the look's warmth), so the relation between two items depends on their
category pair: shoes match the bag's hue while a top sits opposite its coat on the colour wheel under a
complementary scheme. Formality shows in the shape and the motif in the pattern, each through a
mapping of its own per role, so no attribute value is shared by a whole outfit and no identity rule
solves the task.

Items are drawn independently given the look and their category, which makes the generator's own
likelihood exact and cheap: :func:`log_likelihoods` scores items under every look, and the oracle of
:mod:`ctl_lightning.evaluation.ceilings` sums over looks with it. Training outfits also hold off-look
items (label noise), drawn from another look; test outfits are clean.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from ctl_lightning.errors import CtlError

HUES = 12  # look hues are centred on 0, 30, ..., 330 degrees; items jitter around their role's hue
SCHEMES = ("monochrome", "analogous", "complementary", "triadic", "neutral_accent")
# Hue offset of each colour role under each scheme; None: the role is neutral under that scheme.
OFFSETS = {
    "monochrome": {"base": 0, "second": 0, "accent": 0},
    "analogous": {"base": 0, "second": 30, "accent": -30},
    "complementary": {"base": 0, "second": 180, "accent": 180},
    "triadic": {"base": 0, "second": 120, "accent": 240},
    "neutral_accent": {"base": None, "second": None, "accent": 0},
}
KEYS = ("dark", "light")
FORMALITY = ("casual", "smart", "formal")
LOUD_PATTERNS = ("hstripes", "checks", "dots", "chevron", "grid")  # a look's motif shows as one of these
PATTERNS = ("solid", *LOUD_PATTERNS)
CARRIERS = ("base", "second", "neutral", "none")  # the role that may wear the look's loud pattern
TEXTURES = ("smooth", "ribbed", "grain", "mottled")
METALS = ("gold", "silver")
SILHOUETTES = 3  # shape variants per category

ROLE = {
    "Shirts & Tops": "base",
    "Dresses": "base",
    "Coats & Jackets": "second",
    "Hats": "second",
    "Pants": "neutral",
    "Skirts": "neutral",
    "Shorts": "neutral",
    "Sunglasses": "neutral",
    "Shoes": "accent",
    "Handbags": "accent",
    "Handbags, Wallets & Cases": "accent",
    "Scarves & Shawls": "accent",
    "Jewelry": "metal",
    "Necklaces": "metal",
    "Earrings": "metal",
    "Watches": "metal",
}

ROLES = frozenset(ROLE.values())

# Item attribute noise around its role (real looks are never exact).
HUE_JITTER = 8.0  # degrees
SAT_JITTER = 0.07
LIGHT_JITTER = 0.06
SATURATION = (0.80, 0.60, 0.42)  # colourful items by formality: casual is vivid, formal is muted
NEUTRAL_SATURATION = 0.10
NEUTRAL_HUE = (30.0, 220.0)  # warm looks take beige and brown neutrals, cool looks grey and navy
KEY_LIGHTNESS = (0.28, 0.74)  # dark and light keys; roles in contrast take the other one
# Formality shows in the shape (a variant per formality level, permuted per role so that no shape
# index means the same thing across roles) and in the fabric.
SILHOUETTE_FIDELITY = 0.95
TEXTURE_OF_FORMALITY = np.array(
    [[0.10, 0.15, 0.45, 0.30], [0.30, 0.45, 0.15, 0.10], [0.70, 0.20, 0.05, 0.05]]
)  # rows: formality; columns: TEXTURES
METAL_FIDELITY = 0.9  # gold for warm looks, silver for cool ones
LOUD_FIDELITY = 0.9  # the carrier wears the look's motif as a loud (large) pattern
QUIET_SOLID = 0.1  # other items are solid this often, ...
IMPOSSIBLE = -30.0  # log-likelihood of an attribute value a look cannot produce
QUIET_MOTIF = 0.85  # ... or wear the motif small this often (otherwise a random small pattern)


@dataclass(frozen=True)
class Look:
    hue: int  # index into the 12 hue centres
    scheme: int
    key: int
    formality: int
    pattern: int  # index into LOUD_PATTERNS
    carrier: int

    @property
    def base_hue(self) -> float:
        return 30.0 * self.hue

    @property
    def warm(self) -> bool:
        return is_warm(self.base_hue)


@dataclass(frozen=True)
class Item:
    """The latent attributes of one product (written to the dataset for evaluation only)."""

    hue: float
    sat: float
    light: float
    pattern: str
    large_pattern: bool
    texture: str
    silhouette: int
    metal: str  # "" unless the category wears metal


def is_warm(hue: float) -> bool:
    return (hue % 360) < 90 or (hue % 360) >= 330


def combos(split: str, part: str) -> list[tuple[int, int]]:
    """The (hue, scheme) pairs a split draws from. Disjoint: the test's pairs never occur in training.

    Every hue and every scheme still occurs in training; only their combinations are new.
    """
    all_pairs = list(itertools.product(range(HUES), range(len(SCHEMES))))
    if split == "nondisjoint":
        return all_pairs
    if split != "disjoint":
        raise CtlError(f"split must be nondisjoint or disjoint, got {split!r}")
    held = {(h, (h * 2) % len(SCHEMES)) for h in range(HUES)}
    return sorted(held) if part == "test" else [p for p in all_pairs if p not in held]


def sample_look(rng: np.random.Generator, pairs: list[tuple[int, int]]) -> Look:
    hue, scheme = pairs[int(rng.integers(len(pairs)))]
    return Look(
        hue, scheme, int(rng.integers(2)), int(rng.integers(3)), int(rng.integers(len(LOUD_PATTERNS))), int(rng.integers(len(CARRIERS)))
    )


@functools.cache
def _role_permutation(role: str, stream: int, n: int) -> np.ndarray:
    """A permutation of ``n`` fixed per role, made once: the likelihood of every look asks for it
    thousands of times, and seeding a generator is most of its cost."""
    if role not in ROLES:
        raise KeyError(f"{role!r} is not a role ({', '.join(sorted(ROLES))}); a category's role is ROLE[category]")
    permutation = np.random.default_rng([sum(role.encode()), stream]).permutation(n)
    permutation.flags.writeable = False  # shared by every caller
    return permutation


def _silhouette_order(role: str) -> np.ndarray:
    """Which shape variant each formality level prefers in ``role``'s categories: a fixed permutation."""
    return _role_permutation(role, 3, SILHOUETTES)


@dataclass(frozen=True)
class _Colour:
    hue: float
    sat: float
    light: float


def _role_colour(look: Look, role: str) -> _Colour:
    """The colour a role takes in ``look`` (before jitter); metal items' colour is their stone's."""
    role = "accent" if role == "metal" else role
    offset = None if role == "neutral" else OFFSETS[SCHEMES[look.scheme]][role]
    if offset is None:
        return _Colour(NEUTRAL_HUE[0 if look.warm else 1], NEUTRAL_SATURATION, KEY_LIGHTNESS[1 - look.key])
    light = {"base": KEY_LIGHTNESS[look.key], "second": KEY_LIGHTNESS[1 - look.key], "accent": KEY_LIGHTNESS[look.key]}[role]
    return _Colour((look.base_hue + offset) % 360, SATURATION[look.formality], light)


def _is_carrier(look: Look, role: str) -> bool:
    return CARRIERS[look.carrier] == role


def _motif_patterns(role: str) -> np.ndarray:
    """The pattern family that shows each motif in ``role``'s categories: a fixed permutation, so
    that a look's motif is stripes on a top but checks on a scarf (no shared pattern identity)."""
    return _role_permutation(role, 7, len(LOUD_PATTERNS))


def _pattern_probs(look: Look, role: str) -> np.ndarray:
    """Probabilities over :data:`PATTERNS`: the carrier wears the motif loud, others small or solid."""
    probs = np.zeros(len(PATTERNS))
    family = 1 + _motif_patterns(role)[look.pattern]
    loud = _is_carrier(look, role)
    fidelity = LOUD_FIDELITY if loud else QUIET_MOTIF
    probs[0] = 0.0 if loud else QUIET_SOLID
    probs[family] += fidelity
    probs[1 : 1 + len(LOUD_PATTERNS)] += (1 - fidelity - probs[0]) / len(LOUD_PATTERNS)
    return probs


def _silhouette_probs(look: Look, role: str) -> np.ndarray:
    probs = np.full(SILHOUETTES, (1 - SILHOUETTE_FIDELITY) / (SILHOUETTES - 1))
    probs[_silhouette_order(role)[look.formality]] = SILHOUETTE_FIDELITY
    return probs


def _metal_probs(look: Look) -> np.ndarray:
    return np.array([METAL_FIDELITY, 1 - METAL_FIDELITY]) if look.warm else np.array([1 - METAL_FIDELITY, METAL_FIDELITY])


def sample_item(look: Look, category: str, rng: np.random.Generator) -> Item:
    role = ROLE[category]
    colour = _role_colour(look, role)
    pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=_pattern_probs(look, role)))]
    return Item(
        hue=float((colour.hue + rng.normal(0, HUE_JITTER)) % 360),
        sat=float(np.clip(colour.sat + rng.normal(0, SAT_JITTER), 0.0, 1.0)),
        light=float(np.clip(colour.light + rng.normal(0, LIGHT_JITTER), 0.05, 0.95)),
        pattern=pattern,
        large_pattern=pattern != "solid" and _is_carrier(look, role),
        texture=TEXTURES[int(rng.choice(len(TEXTURES), p=TEXTURE_OF_FORMALITY[look.formality]))],
        silhouette=int(rng.choice(SILHOUETTES, p=_silhouette_probs(look, role))),
        metal=METALS[int(rng.choice(2, p=_metal_probs(look)))] if role == "metal" else "",
    )


@functools.cache
def all_looks() -> tuple[Look, ...]:
    """Every look, in the order of :func:`log_likelihoods`' last axis (a uniform prior over them)."""
    ranges = (HUES, len(SCHEMES), len(KEYS), len(FORMALITY), len(LOUD_PATTERNS), len(CARRIERS))
    return tuple(Look(*values) for values in itertools.product(*(range(n) for n in ranges)))


def _normal(x: np.ndarray, mu: np.ndarray, sigma: float) -> np.ndarray:
    return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma * np.sqrt(2 * np.pi))


@functools.cache
def _look_parameters(role: str) -> MappingProxyType[str, np.ndarray]:
    """What every look of :func:`all_looks` gives an item of ``role``, as arrays over the looks (rows of
    the probability tables: attribute values): computed once for each of the few roles."""
    looks = all_looks()
    colours = [_role_colour(look, role) for look in looks]
    parameters = {
        "hue": np.array([c.hue for c in colours]),
        "sat": np.array([c.sat for c in colours]),
        "light": np.array([c.light for c in colours]),
        "pattern": np.log(np.stack([_pattern_probs(look, role) for look in looks], 1) + 1e-12),
        "carries": np.array([_is_carrier(look, role) for look in looks]),
        "texture": np.log(TEXTURE_OF_FORMALITY[[look.formality for look in looks]].T),
        "silhouette": np.log(np.stack([_silhouette_probs(look, role) for look in looks], 1)),
        "metal": np.log(np.stack([_metal_probs(look) for look in looks], 1)),
    }
    for values in parameters.values():
        values.flags.writeable = False  # shared by every call
    return MappingProxyType(parameters)


def log_likelihoods(categories: list[str], items: list[Item]) -> np.ndarray:
    """``[n_items, n_looks]``: log p(item | look, category) under the generator (densities for the
    continuous attributes, clipping ignored), for every look of :func:`all_looks`. An item's category
    matters only through its role."""
    out = np.zeros((len(items), len(all_looks())))
    by_role: dict[str, list[int]] = {}
    for i, category in enumerate(categories):
        by_role.setdefault(ROLE[category], []).append(i)
    for role, idx in by_role.items():
        look = _look_parameters(role)
        rows = [items[i] for i in idx]
        hue = np.array([r.hue for r in rows])[:, None]
        sat = np.array([r.sat for r in rows])[:, None]
        light = np.array([r.light for r in rows])[:, None]
        d_hue = (hue - look["hue"][None] + 180) % 360 - 180
        ll = _normal(d_hue, 0, HUE_JITTER)
        ll += _normal(sat, look["sat"][None], SAT_JITTER)
        ll += _normal(light, look["light"][None], LIGHT_JITTER)
        pattern = np.array([PATTERNS.index(r.pattern) for r in rows])
        texture = np.array([TEXTURES.index(r.texture) for r in rows])
        silhouette = np.array([r.silhouette for r in rows])
        ll += look["pattern"][pattern]
        # Only the look's carrier wears a large pattern: the scale tells which role carries it.
        large = np.array([r.large_pattern for r in rows])[:, None]
        carries = look["carries"][None] & (pattern != 0)[:, None]
        ll += np.where(large == carries, 0.0, IMPOSSIBLE)
        ll += look["texture"][texture]
        ll += look["silhouette"][silhouette]
        if role == "metal":
            ll += look["metal"][np.array([METALS.index(r.metal) for r in rows])]
        out[idx] = ll
    return out


def similarity_class(category: str, item: Item) -> str:
    """Ground truth of "similar products" within a category: hue family (or neutral tone), pattern and
    shape. Two items of a class differ only by jitter, nuisances and texture."""
    colour = f"n{'cw'[is_warm(item.hue)]}{'dl'[item.light > 0.5]}" if item.sat < 0.25 else f"h{int((item.hue + 15) % 360 // 30)}"
    return f"{colour}|{item.pattern}|{item.silhouette}"
