"""Measure the synthetic dataset: generation and preparation time, a picture, and the baselines.

    .venv/bin/python experiments/synthetic_dataset.py      # writes experiments/synthetic_dataset.{md,json}

Baselines are the held-out test metrics of backbone features without any training: random-init
and ImageNet-pretrained tf_efficientnet_lite0 (and random-init resnet18). The trained model of
train.py has to beat them.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ctl_lightning.benchmarks.machine import machine_info
from ctl_lightning.data.datamodules import TripletsDataModule
from ctl_lightning.data.sources import SyntheticCtl
from ctl_lightning.evaluation.metrics import score_held_out
from ctl_lightning.losses import TripletLoss
from ctl_lightning.models.module import CompatibilityModule

HERE = Path(__file__).resolve().parent
OUTFITS, SEED, SIZE = 2000, 0, 64


def timed_build(root: Path) -> dict:
    source = SyntheticCtl(root, seed=SEED, outfits=OUTFITS, world="toy")
    start = time.perf_counter()
    source.ensure()
    generated = time.perf_counter()
    store = source.open_store(SIZE)
    done = time.perf_counter()
    return {"products": len(store), "generate_s": generated - start, "prepare_s": done - generated, "total_s": done - start}, source, store


def picture(store, path: Path, n: int = 4) -> None:
    """Collages on top, the product-store crops of each below it."""
    table = store.table
    test_outfits = list(dict.fromkeys(table.groups[table.rows_in_split("test")]))[:n]
    tile, crop = 300, 60
    canvas = Image.new("RGB", (n * (tile + 10) + 10, tile + 2 * (crop + 6) + 30), "white")
    draw = ImageDraw.Draw(canvas)
    for i, outfit in enumerate(test_outfits):
        rows = np.flatnonzero(table.groups == outfit)
        left = 10 + i * (tile + 10)
        canvas.paste(Image.open(table.image_paths[rows[0]]).convert("RGB").resize((tile, tile)), (left, 10))
        draw.text((left, tile + 12), f"style {table.styles[rows[0]]}", fill="black")
        for j, row in enumerate(rows):
            x, y = left + (j % 4) * (crop + 6), tile + 28 + (j // 4) * (crop + 6)
            canvas.paste(Image.fromarray(np.asarray(store.images[row])).resize((crop, crop)), (x, y))
    canvas.save(path)


def baseline(store, datamodule, backbone: str, pretrained: bool) -> dict:
    torch.manual_seed(0)
    module = CompatibilityModule(loss=TripletLoss(), optimizer=torch.optim.Adam, backbone=backbone, pretrained=pretrained)
    sets = datamodule.evaluation
    rows = np.sort(sets.rows)
    features = module.embed_store(store, rows, backbone)
    return score_held_out(features, features, torch.from_numpy(rows), sets)


def markdown(record: dict) -> str:
    d, t, m = record["dataset"], record["timing"], record["machine"]
    rows = "\n".join(
        f"| {name} | {r['triplet_accuracy']:.3f} | {r['fitb_accuracy']:.3f} | {r['compatibility_auc']:.3f} | {r['similar_style_at5']:.3f} |"
        for name, r in record["baselines"].items()
    )
    return f"""# The toy synthetic world (`data=toy`)

This is the old default world, kept for fast tests: a "same pattern" rule solves it (issue: benchmark
world). The default is now the benchmark world, measured in `benchmark_world.md`.
Every figure here is from one seed: they describe the toy world, they do not compare methods
(`benchmark_world.md` does, as mean ± std over seeds).

Produced by `{record["command"]}` (numbers below are from that run; rerun it to refresh them).
Machine: {m["cpu"]}, {m["cores"]} cores, torch {m["torch"]}.

## What it is

`ctl-data synth --out DIR` (and `python train.py`, on first use) writes {d["outfits"]} CTL outfits
(seed {d["seed"]}; {d["test_outfits"]} held out as `raw_test.tsv`) and 300 STL scenes in the real file
formats: collages `ctl/images/<signature>.jpg` with `raw_train.tsv`, `raw_test.tsv` (space-separated
header, tab-separated rows), `fitb_test.json` (4 candidates, answer at index 0), and STL scenes,
product shots, `fashion.json` and `fashion-cat.json`. The planted style of every product is in
`synthetic_styles.tsv`, read for evaluation only.

- 13 CTL labels, each with its own silhouette; outfits are a top with a bottom or a dress, shoes,
  sometimes a coat, and one to three accessories (4 to 8 items).
- 16 latent styles. A style fixes a pattern, a pattern scale and a texture for all categories, and a
  main and second colour per category, drawn from a separate permutation of 16 colours for each
  category: within a category every style has its own colour (similar products are recognisable),
  across categories a style pairs different colours (compatibility is not colour identity).
- Per item: colour jitter, scale, position, pattern phase and period, shape proportions, pixel noise.

![collages and their crops](figures/synthetic_collages.png)

Four test collages (top) and the 64 px crops the product store holds for each (below); three of
them share style 15: same look per category, different colours across categories.

## Size and speed

{d["products"]:,} products. Generating took {t["generate_s"]:.1f} s and preparing the 64 px product
store {t["prepare_s"]:.1f} s: **{t["total_s"]:.1f} s in all** (budget: 60 s), measured into an empty
folder. The same seed gives byte-identical annotation files (tests/test_synthetic.py).

## Baselines: backbone features without training

Held-out test metrics (docs/DESIGN.md section 4) of raw backbone features, on the {d["test_outfits"]}
test outfits (seed 42, the one `train.py` uses). Chance: triplet accuracy 0.5, FITB 0.25, AUC 0.5,
style agreement@5 1/16 = 0.0625.

| features | triplet accuracy | FITB accuracy | compatibility AUC | same-category style agreement@5 |
|---|---|---|---|---|
{rows}

ImageNet features already find same-style products within a category (the last column: the ground
truth for similar products), but tell compatible from incompatible cross-category pairs far less
well: that is what the trained head must learn. `experiments/training.md` reports the trained model
against these numbers.
"""


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        timing, _, _ = timed_build(Path(tmp))
    root = HERE.parent / "data" / "synthetic"
    _, source, store = timed_build(root)
    datamodule = TripletsDataModule(source, image_size=SIZE, seed=42)
    datamodule.setup("test")
    (HERE / "figures").mkdir(exist_ok=True)
    picture(store, HERE / "figures" / "synthetic_collages.png")
    results = {
        "random-init tf_efficientnet_lite0": baseline(store, datamodule, "tf_efficientnet_lite0", False),
        "ImageNet tf_efficientnet_lite0 (default backbone)": baseline(store, datamodule, "tf_efficientnet_lite0", True),
        "random-init resnet18": baseline(store, datamodule, "resnet18", False),
    }
    record = {
        "command": "python experiments/synthetic_dataset.py",
        "dataset": {
            "outfits": OUTFITS,
            "seed": SEED,
            "image_size": SIZE,
            "products": timing["products"],
            "test_outfits": len(set(store.table.groups[store.table.rows_in_split("test")])),
        },
        "timing": timing,
        "machine": machine_info(),
        "baselines": results,
    }
    (HERE / "synthetic_dataset.json").write_text(json.dumps(record, indent=2) + "\n")
    (HERE / "synthetic_dataset.md").write_text(markdown(record))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
