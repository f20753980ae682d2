"""Write the embedded synthetic dataset in the real CTL and STL formats, or in the Polyvore Outfits layout.

Everything downstream (readers, product store, DataModules) runs on it exactly as on real data.
Each outfit draws from its own random generator, seeded by ``(seed, outfit index)``, so the output
is the same whether collages are rendered by one process or several, and the same seed always gives
byte-identical annotation files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ctl_lightning.data.formats.ctl import RAW_FIELDS, product_key
from ctl_lightning.data.formats.polyvore import SPLITS
from ctl_lightning.data.synthetic import benchmark, world
from ctl_lightning.data.synthetic.drawing import (
    item_size,
    render_attribute_item,
    render_item,
)
from ctl_lightning.data.synthetic.polyvore_layout import PolyvoreRow, write_polyvore
from ctl_lightning.data.synthetic.questions import fitb_draws
from ctl_lightning.data.synthetic.styles import (
    CTL_LABELS,
    STL_CATEGORY_PATHS,
    Style,
    make_styles,
)
from ctl_lightning.errors import CtlError
from ctl_lightning.io import building, replace_dir, write_json
from ctl_lightning.workers import worker_pool

MANIFEST = "synthetic.json"
GENERATOR_VERSION = 3  # bump when the output changes, so that cached datasets are regenerated

# The real header is separated by spaces, the rows by tabs; the synthetic files keep that quirk.
RAW_HEADER = "image_signature bounding_x  bounding_y  bounding_width  bounding_height label"

VALID_FRACTION = 0.1  # Polyvore layout: outfits of valid.json (the CTL layout validates on a share of train)
ACCESSORIES = ("Handbags", "Jewelry", "Hats", "Sunglasses", "Watches", "Scarves & Shawls")
ACCESSORY_WEIGHTS = np.array([0.34, 0.18, 0.14, 0.13, 0.1, 0.11])


@dataclass(frozen=True)
class SynthConfig:
    out: Path
    seed: int = 0
    outfits: int = 5000
    test_fraction: float = 0.2
    styles: int = 16
    canvas: int = 320
    scenes: int = 300
    workers: int = 0  # 0: one per core
    world: str = "bench"  # bench: attribute rules with headroom; toy: one latent style per outfit
    split: str = "nondisjoint"  # bench only; disjoint: test looks combine hue and scheme unseen in training
    layout: str = "ctl"  # ctl: ctl/ and stl/; polyvore: polyvore_outfits/ with both splits (bench only)
    render: bool = True  # False: annotations only (no images), for figures computed from the latent truth


def compose_outfit(rng: np.random.Generator) -> list[str]:
    """A plausible outfit: a top with a bottom or a dress, shoes, maybe a coat, and accessories."""
    items = ["Dresses"] if rng.random() < 0.22 else ["Shirts & Tops", str(rng.choice(["Pants", "Skirts", "Shorts"], p=[0.55, 0.25, 0.2]))]
    if rng.random() < 0.3:
        items.append("Coats & Jackets")
    items.append("Shoes")
    # CTL collages hold 4 to 8 products: a dress with shoes needs two accessories.
    n_accessories = max(int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15])), 4 - len(items))
    items += list(rng.choice(ACCESSORIES, size=n_accessories, replace=False, p=ACCESSORY_WEIGHTS))
    return items


def _layout(n: int, canvas: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """Cells of a grid (shuffled) in which the items are placed: ``(left, top, width, height)``."""
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    cw, ch = canvas // cols, canvas // rows
    cells = [(c * cw, r * ch, cw, ch) for r in range(rows) for c in range(cols)]
    order = rng.permutation(len(cells))[:n]
    return [cells[i] for i in order]


def _place(category: str, cell, rng: np.random.Generator) -> tuple[int, int, int, int]:
    left, top, cw, ch = cell
    w, h = item_size(category, int(ch * rng.uniform(0.68, 0.92)))
    if w > cw * 0.92:
        shrink = cw * 0.92 / w
        w, h = max(8, int(w * shrink)), max(8, int(h * shrink))
    x = left + int(rng.integers(0, max(1, cw - w)))
    y = top + int(rng.integers(0, max(1, ch - h)))
    return x, y, w, h


def _signature(rng: np.random.Generator) -> str:
    return rng.bytes(16).hex()


_STYLES: list[Style] = []


def _init_worker(styles: list[Style]) -> None:
    _STYLES[:] = styles


Row = tuple[str, tuple[float, ...], str, "benchmark.PlannedItem | None", "world.Look | None"]


def _render_outfit(job) -> tuple[str, list[Row]]:
    """Draw toy outfit ``index`` into ``images_dir``; returns its signature and
    ``(label, box, style, None, None)`` rows."""
    seed, index, canvas, images_dir = job
    rng = np.random.default_rng([seed, 1, index])
    signature = _signature(rng)
    style = _STYLES[int(rng.integers(len(_STYLES)))]
    categories = compose_outfit(rng)
    image = Image.new("RGB", (canvas, canvas), (255, 255, 255))
    rows = []
    for category, cell in zip(categories, _layout(len(categories), canvas, rng)):
        x, y, w, h = _place(category, cell, rng)
        item = render_item(category, style, w, h, rng)
        image.paste(item, (x, y), item)
        rows.append((category, (x / canvas, y / canvas, w / canvas, h / canvas), str(style.index), None, None))
    if images_dir:
        image.save(Path(images_dir) / f"{signature}.jpg", quality=90)
    return signature, rows


def _plan_bench(rng: np.random.Generator, canvas: int, is_test: bool, split: str) -> tuple[world.Look, benchmark.Plan]:
    """A benchmark outfit: test outfits take the test looks of the split and hold no off-look item."""
    pairs = world.combos(split, "test" if is_test else "train")
    look = world.sample_look(rng, pairs)
    categories = compose_outfit(rng)
    return look, benchmark.plan_outfit(categories, _layout(len(categories), canvas, rng), look, rng, not is_test, pairs)


def _bench_outfit(job) -> tuple[str, list[Row]]:
    """Plan (and, when ``images_dir`` is set, draw) benchmark outfit ``index`` as a collage."""
    seed, index, canvas, images_dir, is_test, split = job
    rng = np.random.default_rng([seed, 1, index])
    signature = _signature(rng)
    look, plan = _plan_bench(rng, canvas, is_test, split)
    if images_dir:
        draw_rng = np.random.default_rng([seed, 4, index])
        benchmark.save_jpeg(benchmark.render(plan, canvas, draw_rng), Path(images_dir) / f"{signature}.jpg", draw_rng)
    return signature, [
        (p.category, tuple(v / canvas for v in p.box), world.similarity_class(p.category, p.item), p, look) for p in plan.items
    ]


def _polyvore_outfit(job) -> list[PolyvoreRow]:
    """Plan benchmark outfit ``index`` of ``split`` (and, when ``images_dir`` is set, draw each item as
    a product shot named by its item id). The streams differ per split, so item ids never collide."""
    seed, index, canvas, images_dir, is_test, split = job
    stream = SPLITS.index(split)
    rng = np.random.default_rng([seed, 6, stream, index])
    look, plan = _plan_bench(rng, canvas, is_test, split)
    draw_rng = np.random.default_rng([seed, 7, stream, index])
    rows = []
    for planned in plan.items:
        item_id = _signature(rng)
        if images_dir:
            _shot(render_attribute_item(planned.category, planned.item, *planned.size, draw_rng), Path(images_dir) / f"{item_id}.jpg")
        rows.append((item_id, world.similarity_class(planned.category, planned.item), planned, look))
    return rows


def _shot(item: Image.Image, path: Path) -> None:
    """A catalogue shot: the product alone, centred on white."""
    w, h = item.size
    shot = Image.new("RGB", (int(max(w, h) * 1.15), int(max(w, h) * 1.15)), (255, 255, 255))
    shot.paste(item, ((shot.width - w) // 2, (shot.height - h) // 2), item)
    shot.save(path, quality=90)


def _scene_categories(rng: np.random.Generator) -> list[str]:
    return list(rng.choice(list(STL_CATEGORY_PATHS), size=int(rng.integers(2, 5)), replace=False))


def _bench_scene(job) -> tuple[str, list[tuple[str, str, tuple[float, ...], str]]]:
    """Draw benchmark STL scene ``index`` and a catalogue shot of each product in it."""
    seed, index, canvas, root = job
    rng = np.random.default_rng([seed, 2, index])
    scene = _signature(rng)
    look = world.sample_look(rng, world.combos("nondisjoint", "test"))
    categories = _scene_categories(rng)
    plan = benchmark.plan_outfit(categories, _layout(len(categories), canvas, rng), look, rng, False, [])
    draw_rng = np.random.default_rng([seed, 5, index])
    benchmark.save_jpeg(benchmark.render(plan, canvas, draw_rng), Path(root) / "scenes" / f"{scene}.jpg", draw_rng)
    rows = []
    for p in plan.items:
        product = _signature(rng)
        _shot(render_attribute_item(p.category, p.item, *p.size, draw_rng), Path(root) / "products" / f"{product}.jpg")
        x, y, w, h = p.box
        rows.append(
            (product, p.category, (x / canvas, y / canvas, (x + w) / canvas, (y + h) / canvas), world.similarity_class(p.category, p.item))
        )
    return scene, rows


def _render_scene(job: tuple[int, int, int, str]) -> tuple[str, list[tuple[str, str, tuple[float, ...], str]]]:
    """Draw toy STL scene ``index`` and a catalogue shot of each product in it."""
    seed, index, canvas, root = job
    rng = np.random.default_rng([seed, 2, index])
    scene = _signature(rng)
    style = _STYLES[int(rng.integers(len(_STYLES)))]
    categories = _scene_categories(rng)
    background = tuple(int(v) for v in rng.integers(215, 245, size=3))
    image = Image.new("RGB", (canvas, canvas), background)
    rows = []
    for category, cell in zip(categories, _layout(len(categories), canvas, rng)):
        x, y, w, h = _place(category, cell, rng)
        item = render_item(category, style, w, h, rng)
        image.paste(item, (x, y), item)
        product = _signature(rng)
        _shot(item, Path(root) / "products" / f"{product}.jpg")
        rows.append((product, category, (x / canvas, y / canvas, (x + w) / canvas, (y + h) / canvas), str(style.index)))
    image.save(Path(root) / "scenes" / f"{scene}.jpg", quality=90)
    return scene, rows


def _fmt(v: float) -> str:
    return f"{v:.7f}"


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _run(fn, jobs, styles, workers: int, description: str):
    with worker_pool(workers, initializer=_init_worker, initargs=(styles,)) as pool:
        return list(tqdm(pool.map(fn, jobs, chunksize=16), total=len(jobs), desc=description, unit="img"))


def _write_ctl(root: Path, outfits, n_test: int, rng: np.random.Generator) -> None:
    train, test = outfits[: len(outfits) - n_test], outfits[len(outfits) - n_test :]
    for name, part in (("raw_train.tsv", train), ("raw_test.tsv", test)):
        lines = [RAW_HEADER]
        for signature, rows in part:
            lines += ["\t".join([signature, *map(_fmt, row[1]), row[0]]) for row in rows]
        _write_lines(root / name, lines)
    styles, attributes = ["product_key\tstyle"], ["\t".join(benchmark.ATTRIBUTE_COLUMNS)]
    for signature, rows in outfits:
        for _label, box, style, planned, look in rows:
            key = product_key(signature, box)
            styles.append(f"{key}\t{style}")
            if planned is not None:
                attributes.append(benchmark.attribute_line(key, planned, look))
    _write_lines(root / "synthetic_styles.tsv", styles)
    if len(attributes) > 1:
        _write_lines(root / benchmark.ATTRIBUTES_FILE, attributes)
    _write_lines(root / "fitb_test.json", [json.dumps(_fitb_questions(test, rng), indent=1)])


def _fitb_questions(outfits, rng: np.random.Generator) -> list[dict]:
    """One question per outfit: blank one item; 3 wrong candidates of its category from other outfits."""

    def item(o: int, k: int) -> dict:
        signature, rows = outfits[o]
        label, box = rows[k][:2]
        return {"signature": signature, "x": _fmt(box[0]), "y": _fmt(box[1]), "w": _fmt(box[2]), "h": _fmt(box[3]), "label": label}

    draws = fitb_draws([[row[0] for row in rows] for _, rows in outfits], rng)
    return [
        {"question": [item(o, k) for k in range(len(outfits[o][1])) if k != blank], "answers": [item(o, blank), *(item(*w) for w in wrong)]}
        for (o, blank), wrong in draws
    ]


def _write_stl(root: Path, scenes) -> None:
    fashion, categories, styles = [], {}, ["product\tstyle"]
    for scene, rows in scenes:
        for product, category, ltrb, style in rows:
            fashion.append(json.dumps({"product": product, "scene": scene, "bbox": [round(v, 7) for v in ltrb]}))
            categories[product] = STL_CATEGORY_PATHS[category]
            styles.append(f"{product}\t{style}")
    _write_lines(root / "fashion.json", fashion)
    _write_lines(root / "fashion-cat.json", [json.dumps(categories, indent=0)])
    _write_lines(root / "synthetic_styles.tsv", styles)


def is_complete(out: Path, config: SynthConfig | None = None) -> bool:
    """A finished dataset written by this generator version and, if given, with ``config``'s settings.

    An older version or other settings (the folder name does not hold them all) make it stale.
    """
    try:
        manifest = json.loads((Path(out) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("generator_version") != GENERATOR_VERSION:
        return False
    if config is None:
        return True
    # Datasets written before the Polyvore layout existed have no layout in their manifest: CTL's.
    recorded = {"layout": "ctl", **manifest}
    return all(recorded.get(k) == v for k, v in _settings(config).items())


def _settings(config: SynthConfig) -> dict:
    """What makes one generated dataset differ from another: recorded in its manifest, checked on reuse."""
    return dict(
        seed=config.seed,
        outfits=config.outfits,
        styles=config.styles,
        canvas=config.canvas,
        scenes=config.scenes,
        world=config.world,
        split=config.split,
        layout=config.layout,
        rendered=config.render,
    )


def generate(config: SynthConfig) -> Path:
    """Write the dataset to ``config.out`` atomically (a temporary folder renamed at the end)."""
    out = Path(config.out)
    # CtlError, not ValueError: these come straight from the command line and must not end in a traceback.
    if config.outfits < 10:
        raise CtlError(f"--outfits must be at least 10, got {config.outfits}")
    if config.styles < 2:
        raise CtlError(f"--styles must be at least 2, got {config.styles}")
    if config.scenes < 1:
        raise CtlError(f"--scenes must be at least 1, got {config.scenes}")
    if config.world not in ("bench", "toy"):
        raise CtlError(f"world must be bench or toy, got {config.world!r}")
    if config.layout not in ("ctl", "polyvore") or (config.layout == "polyvore" and config.world != "bench"):
        raise CtlError(f"layout must be ctl, or polyvore with the bench world; got {config.layout!r} with {config.world!r}")
    world.combos(config.split, "train")  # a bad split name fails here, before any drawing
    with building(out) as tmp:
        workers = config.workers or max(1, os.cpu_count() or 1)
        n_test = max(2, round(config.outfits * config.test_fraction))
        if config.layout == "polyvore":
            _generate_polyvore(config, tmp / "polyvore_outfits", n_test, workers)
        else:
            _generate_ctl_stl(config, tmp, n_test, workers)
        manifest = dict(generator_version=GENERATOR_VERSION, **_settings(config), test_outfits=n_test, fields=list(RAW_FIELDS))
        write_json(tmp / MANIFEST, manifest)
        replace_dir(tmp, out)
    return out


def _generate_polyvore(config: SynthConfig, root: Path, n_test: int, workers: int) -> None:
    """Both splits of the benchmark world in the Polyvore layout, each with ``config.outfits`` outfits:
    the last ``n_test`` are test outfits, the ``VALID_FRACTION`` before them validation ones."""
    (root / "images").mkdir(parents=True)
    images = str(root / "images") if config.render else ""
    n_valid = max(2, round(config.outfits * VALID_FRACTION))
    parts = ["train"] * (config.outfits - n_valid - n_test) + ["valid"] * n_valid + ["test"] * n_test
    drawn = {}
    for split in SPLITS:
        jobs = [(config.seed, i, config.canvas, images, part == "test", split) for i, part in enumerate(parts)]
        drawn[split] = _run(_polyvore_outfit, jobs, [], workers, f"benchmark-world products ({split})")
    write_polyvore(root, drawn, parts, np.random.default_rng([config.seed, 8]))


def _generate_ctl_stl(config: SynthConfig, tmp: Path, n_test: int, workers: int) -> None:
    for sub in ("ctl/images", "stl/scenes", "stl/products"):
        (tmp / sub).mkdir(parents=True)
    styles = make_styles(config.styles, CTL_LABELS + tuple(STL_CATEGORY_PATHS), np.random.default_rng([config.seed, 0]))
    images = str(tmp / "ctl" / "images") if config.render else ""
    if config.world == "bench":
        jobs = [(config.seed, i, config.canvas, images, i >= config.outfits - n_test, config.split) for i in range(config.outfits)]
        outfits = _run(_bench_outfit, jobs, styles, workers, "benchmark-world collages")
    else:
        jobs = [(config.seed, i, config.canvas, images) for i in range(config.outfits)]
        outfits = _run(_render_outfit, jobs, styles, workers, "synthetic CTL collages")
    _write_ctl(tmp / "ctl", outfits, n_test, np.random.default_rng([config.seed, 3]))
    if config.render:
        stl_jobs = [(config.seed, i, config.canvas, str(tmp / "stl")) for i in range(config.scenes)]
        scene_fn = _bench_scene if config.world == "bench" else _render_scene
        _write_stl(tmp / "stl", _run(scene_fn, stl_jobs, styles, workers, "synthetic STL scenes"))
