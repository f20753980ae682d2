"""Measure the benchmark world: ceilings, shortcuts, baselines and trained models, over seeds and splits.

    .venv/bin/python experiments/benchmark_world.py                 # 3 seeds x 2 splits (about 75 min on a loaded 2-core machine)
    .venv/bin/python experiments/benchmark_world.py --seeds 0 --splits nondisjoint --outfits 300   # a smoke run

For each split and seed, the world is generated with that seed and `make train`'s recipe is trained
with the same seed, as a user would type it (`python train.py data.source.split=... seed=...`; with
`--softtriple` also `loss=softtriple`). Every other row is scored on exactly the held-out sets those
runs test on. `--reuse-runs` takes the metrics of runs already made. Writes
experiments/benchmark_world.{md,json}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import runs
import torch

from ctl_lightning.data.datamodules import held_out_sets
from ctl_lightning.data.sources import SyntheticCtl
from ctl_lightning.evaluation import ceilings
from ctl_lightning.evaluation.metrics import HELD_OUT_METRICS
from ctl_lightning.models.backbones import create_backbone

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = REPO / "outputs" / "benchmark_world"
METRICS = tuple(HELD_OUT_METRICS)
# Trained recipes: overrides, and whether the backbone learns (if not, similar products use the
# baseline's own features, so that row would repeat the baseline by construction and is left out).
TRAINED = {
    "make train (ImageNet backbone, last stage fine-tuned, + head; triplet loss)": ([], True),
    "frozen backbone, head only (model.trainable_stages=0 trainer.max_epochs=8)": (
        ["model.trainable_stages=0", "trainer.max_epochs=8"],
        False,
    ),
}
# SoftTriple (`--softtriple`): one class per training outfit, 4,050 x 10 centers at the default size,
# about 0.4 s a step on 2 CPU cores; run it where time allows.
SOFTTRIPLE = {
    "SoftTriple (loss=softtriple, head only, 1 epoch)": (["loss=softtriple", "trainer.max_epochs=1", "model.trainable_stages=0"], False)
}
# The gates of the issue that asked for this world, on held-out triplet accuracy (nondisjoint split).
GATES = (
    "oracle >= 0.92 (AUC >= 0.95)",
    "every identity rule <= 0.65",
    "colour histogram <= 0.70",
    "ImageNet baseline <= 0.68",
    "make train >= 0.80 and >= 0.05 below the oracle",
)


def train(split: str, seed: int, outfits: int, extra: list[str], reuse: bool) -> dict:
    """One `python train.py` run of this world (or, with ``reuse``, the one already made); its metrics."""
    name = "-".join([split, f"seed{seed}", *(o.replace("=", "_") for o in extra)])
    world = [f"data.source.split={split}", f"data.source.seed={seed}", f"seed={seed}", f"data.source.outfits={outfits}"]
    return runs.train([*world, f"paths.data_dir={OUT / 'data'}", *extra], OUT / "runs" / name, reuse)


def backbone_features(images: np.ndarray, pretrained: bool, seed: int) -> np.ndarray:
    """Pooled features of the default backbone (tf_efficientnet_lite0) for uint8 crops."""
    import timm

    torch.manual_seed(seed)
    model = create_backbone("tf_efficientnet_lite0", pretrained=pretrained).eval()
    config = timm.data.resolve_model_data_config(model)
    mean, std = (torch.tensor(config[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 256):
            x = torch.from_numpy(np.asarray(images[i : i + 256])).permute(0, 3, 1, 2).float() / 255
            out.append(model((x - mean) / std).numpy())
    return np.concatenate(out)


def measure(split: str, seed: int, args) -> dict[str, dict[str, float]]:
    """Every row of the table for one world (split, seed)."""
    rows: dict[str, dict[str, float]] = {}
    outfits = args.outfits
    recipes = {} if args.skip_training else TRAINED | (SOFTTRIPLE if args.softtriple else {})
    trained = {name: train(split, seed, outfits, extra, args.reuse_runs) for name, (extra, _) in recipes.items()}
    backbone_learns = {name: learns for name, (_, learns) in recipes.items()}
    source = SyntheticCtl(OUT / "data" / "synthetic", seed=seed, outfits=outfits, split=split)
    store = source.open_store(64)
    sets = held_out_sets(store.table, source, seed)
    items = ceilings.latent_items(store.table, source.root)
    rng = np.random.default_rng(seed)
    rows["random scores"] = ceilings.embedding_scores(rng.normal(size=(len(store), 16)), sets)
    for name, scores in ceilings.identity_rule_scores(items, len(store), sets).items():
        rows[f"identity rule: {name}"] = scores
    test_rows = store.table.rows_in_split("test")
    per_row = np.zeros((len(store), 1), dtype=np.float32)  # rows outside the test split are never scored

    def scatter(features: np.ndarray) -> np.ndarray:
        full = np.repeat(per_row, features.shape[1], axis=1)
        full[test_rows] = features
        return full

    crops = store.images[test_rows]
    rows["colour-histogram similarity (HSV 12x4x4)"] = ceilings.embedding_scores(scatter(ceilings.colour_histograms(crops)), sets)
    rows["random-init backbone features"] = ceilings.embedding_scores(scatter(backbone_features(crops, False, seed)), sets)
    for name, metrics in trained.items():
        if "ImageNet features (the baseline)" not in rows:
            rows["ImageNet features (the baseline)"] = {k: metrics[f"baseline/{k}"] for k in METRICS}
        rows[name] = {k: metrics[f"test/{k}"] for k in (METRICS if backbone_learns[name] else METRICS[:3])}
    rows["oracle (generator likelihood on the true attributes)"] = ceilings.oracle_metrics(sets, source.root)
    return rows


def gates(summary: dict[str, dict[str, list[float]]]) -> list[tuple[str, bool, str]]:
    acc = {row: values["triplet_accuracy"][0] for row, values in summary.items()}
    oracle = acc["oracle (generator likelihood on the true attributes)"]
    oracle_auc = summary["oracle (generator likelihood on the true attributes)"]["compatibility_auc"][0]
    rules = {row: a for row, a in acc.items() if row.startswith("identity rule")}
    hist = acc["colour-histogram similarity (HSV 12x4x4)"]
    checks = [
        (GATES[0], oracle >= 0.92 and oracle_auc >= 0.95, f"{oracle:.3f} (AUC {oracle_auc:.3f})"),
        (GATES[1], max(rules.values()) <= 0.65, f"max {max(rules.values()):.3f}"),
        (GATES[2], hist <= 0.70, f"{hist:.3f}"),
    ]
    if "ImageNet features (the baseline)" in acc:
        base, trained = acc["ImageNet features (the baseline)"], acc[next(iter(TRAINED))]
        checks += [
            (GATES[3], base <= 0.68, f"{base:.3f}"),
            (GATES[4], trained >= 0.80 and oracle - trained >= 0.05, f"{trained:.3f} ({oracle - trained:.3f} below)"),
        ]
    return checks


NOTES = """## Reading the table

- The two splits share everything but the looks' hue and scheme, drawn from the same random streams:
  rows that ignore colour (random scores, pattern, texture, silhouette) are identical across them.
- `make train` trains the frozen backbone's last stage with the head (`model.trainable_stages=1`, 3
  epochs). The head alone on frozen ImageNet features (the seed's recipe, 8 epochs; the second trained
  row) stays lower: the per-role mappings of shape and pattern (a top's shape for formality is not a
  skirt's) are not linear in those features, and the seed's head is linear. The head-only rows come from
  runs made at commit f403a90 with that same recipe (`--reuse-runs`; rerunning without it remakes them).
- Similar products use the backbone's features, which the last stage's training changes: their row
  is given for `make train` and left out for the head-only recipe, where it is the baseline's by
  construction.
- SoftTriple is opt-in (`--softtriple`): with one class per training outfit it has 40,500 centers at
  the default size, 0.2-0.8 s a step on 2 CPU cores. Its rows (head only, one epoch, both splits) are
  in `benchmark_world_softtriple.md` (`--softtriple --reuse-runs --out
  experiments/benchmark_world_softtriple`).
"""


def markdown(results: dict, args) -> str:
    seeds = " ".join(map(str, args.seeds))
    lines = [
        "# The benchmark world: ceilings, shortcuts and trained models",
        "",
        f"Produced by `python experiments/benchmark_world.py --seeds {seeds} --splits {' '.join(args.splits)} "
        f"--outfits {args.outfits}{' --softtriple' if args.softtriple else ''}` on 2 CPU cores. Each cell is the mean ± std over seeds {seeds}: each seed is a "
        "different world (`data.source.seed`) and a different training seed (`seed`). Every row is scored on the "
        "same held-out sets as the trained models (one triplet per test outfit, the FITB file, real against "
        "random same-category outfits). Identity rules break ties at random (a tie is worth one half).",
        "",
    ]
    for split, summary in results.items():
        lines += [f"## {split}", "", "| scorer | " + " | ".join(HELD_OUT_METRICS[m] for m in METRICS) + " |", "|---|---|---|---|---|"]
        for row, values in summary.items():
            cells = [f"{values[m][0]:.3f} ± {values[m][1]:.3f}" if m in values else "n/a" for m in METRICS]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines += ["", "Gates (held-out triplet accuracy):", ""]
        lines += [f"- {'met' if ok else '**not met**'}: {gate}: {value}" for gate, ok, value in gates(summary)]
        lines.append("")
    return "\n".join(lines) + "\n" + NOTES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--splits", nargs="+", default=["nondisjoint", "disjoint"])
    parser.add_argument("--outfits", type=int, default=5000)
    parser.add_argument("--skip-training", action="store_true", help="only the rows that need no training run")
    parser.add_argument("--reuse-runs", action="store_true", help="reuse the metrics of training runs already in outputs/")
    parser.add_argument("--softtriple", action="store_true", help="also train with loss=softtriple (slow on a CPU)")
    parser.add_argument("--out", type=Path, default=HERE / "benchmark_world")
    args = parser.parse_args()
    results = {split: runs.summarise([measure(split, seed, args) for seed in args.seeds]) for split in args.splits}
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results, args)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
