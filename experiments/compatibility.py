"""Compare compatibility methods on the benchmark world: losses, miners and type-aware subspaces.

    .venv/bin/python experiments/compatibility.py                  # 3 seeds x 2 splits x 2 layouts (about 6 h on 2 cores)
    .venv/bin/python experiments/compatibility.py --seeds 0 --splits nondisjoint --layouts ctl --outfits 300   # smoke run

Every trained row is a `python train.py` run, one per layout, split and seed, with the seed's
head-only recipe (frozen ImageNet backbone, the head trains: `model.trainable_stages=0`), or, in the
rows marked "last stage fine-tuned", with make train's (the backbone's last stage learns too). Each seed is
another world (`data.source.seed`) and another training seed (`seed`). The CTL layout tests on the
project's held-out sets; the Polyvore layout on the dataset's own `compatibility_test.txt` and
`fill_in_blank_test.json`. The baseline and the oracle come from the same runs' metrics.json. Runs go
`--parallel` at a time, sharing the cores; the backbone features of a world are computed once
(`callbacks.feature_cache.directory`). Writes experiments/compatibility.{md,json}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import runs

from ctl_lightning.evaluation.metrics import HELD_OUT_METRICS

HERE = Path(__file__).resolve().parent
OUT = runs.REPO / "outputs" / "compatibility"
METRICS = ("triplet_accuracy", "fitb_accuracy", "compatibility_auc")  # the head's; similar products use the frozen backbone
LAYOUTS = {"ctl": "data=synthetic", "polyvore": "data=synthetic_polyvore"}
STAGES = "model.trainable_stages"  # 0 (the head only) unless a recipe sets it
UNIFORM_EPOCHS = 8  # the seed's head-only recipe: 8 epochs of 16 sampled triplets per outfit, 900 steps each
# Outfit-grouped batches (32 outfits x 4 items) make an epoch of about 178 steps at 5,000 outfits;
# 40 epochs are about as many optimizer steps as the uniform row's, so that a miner is not judged on
# less training.
GROUPED = ["data.batching=outfits", "trainer.max_epochs=40"]
RECIPES = {
    "triplet, uniform sampled triplets (the seed's sampling)": [f"trainer.max_epochs={UNIFORM_EPOCHS}"],
    "triplet, outfit-grouped batches, every in-batch triplet": GROUPED,
    "triplet + batch_hard miner": [*GROUPED, "loss.miner=batch_hard"],
    "triplet + semihard miner": [*GROUPED, "loss.miner=semihard"],
    "triplet + multi_similarity miner": [*GROUPED, "loss.miner=multi_similarity"],
    # fixed masks split the embedding between the pairs (91 in the CTL layout, 66 in Polyvore's): at
    # 128 dimensions a pair got one, and a normalised 1-d embedding is a sign, so every distance ties
    "type-aware, fixed subspaces (model.embedding_dim=1024: 11 to 15 dimensions a pair)": [
        "model=type_aware",
        "model.subspaces=fixed",
        "model.embedding_dim=1024",
        f"trainer.max_epochs={UNIFORM_EPOCHS}",
    ],
    "type-aware, learned masks": ["model=type_aware", "model.subspaces=learned", f"trainer.max_epochs={UNIFORM_EPOCHS}"],
    "type-aware, projections": ["model=type_aware", "model.subspaces=projection", f"trainer.max_epochs={UNIFORM_EPOCHS}"],
    # one class per training outfit: 0.2-0.8 s a step on 2 cores, so one epoch
    "SoftTriple (1 epoch)": ["loss=softtriple", "trainer.max_epochs=1"],
    # make train's recipe (the backbone's last stage learns too, 3 epochs) with the type-aware model,
    # so that the third target compares like with like: about 18 minutes a run on 2 cores
    "type-aware, learned masks, last stage fine-tuned (make train's recipe)": [
        "model=type_aware",
        "model.subspaces=learned",
        f"{STAGES}=1",
        "trainer.max_epochs=3",
    ],
}


def recipe(row: str) -> list[str]:
    """A row's overrides, head-only (the seed's recipe) unless the row sets the trainable stages."""
    overrides = RECIPES[row]
    return overrides if any(o.startswith(f"{STAGES}=") for o in overrides) else [f"{STAGES}=0", *overrides]


UNIFORM, *_ = RECIPES
# The first two targets compare head-only rows with head-only uniform sampling; the fine-tuned rows
# enter the third only.
HEAD_ONLY = [row for row in RECIPES if f"{STAGES}=0" in recipe(row)]
MINERS = [row for row in HEAD_ONLY if "miner" in row]
TYPE_AWARE = [row for row in HEAD_ONLY if row.startswith("type-aware")]
BASELINE = "ImageNet features (the baseline, untrained head)"
ORACLE = "oracle (generator likelihood on the true attributes)"
MAKE_TRAIN = "make train (experiments/benchmark_world.md)"
PUBLISHED = """## Published results on the real Polyvore Outfits (another dataset: not comparable with the tables above)

| model | split | compatibility AUC | FITB |
|---|---|---|---|
| type-aware embeddings (Vasileva et al., ECCV 2018) | nondisjoint | 0.86 | 55.3% |
| type-aware, released `--learned --l2_embed` model | nondisjoint | 0.88 | 57.6% |
| CSA-Net (Lin et al., CVPR 2020) | nondisjoint | 0.91 | 63.7% |
| OutfitTransformer (Sarkar et al., WACV 2023) | nondisjoint | 0.93 | 67.1% |

With the dataset unpacked under `data/polyvore_outfits/`, the same protocol (its own
`compatibility_test.txt` and `fill_in_blank_test.json`) scores a model with, for example:

```bash
python train.py data=polyvore data.source.split=nondisjoint model=type_aware model.subspaces=learned \\
    data.batching=outfits loss.miner=semihard data.image_size=112 trainer=gpu
python train.py data=polyvore data.source.split=disjoint model=type_aware model.subspaces=learned \\
    data.batching=outfits loss.miner=semihard data.image_size=112 trainer=gpu
```

`test/compatibility_auc` and `test/fitb_accuracy` in the run's metrics.json are the two columns above.
"""


def world(layout: str, split: str, seed: int, outfits: int) -> list[str]:
    return [
        LAYOUTS[layout],
        f"data.source.split={split}",
        f"data.source.seed={seed}",
        f"seed={seed}",
        f"data.source.outfits={outfits}",
        f"paths.data_dir={OUT / 'data'}",
        f"callbacks.feature_cache.directory={OUT / 'feature_cache'}",
    ]


def run_name(layout: str, split: str, seed: int, row: str) -> str:
    """A run's directory name: its world and its recipe's overrides."""
    return "-".join([layout, split, f"seed{seed}", *(o.replace("=", "_") for o in RECIPES[row])])


def planned(args) -> dict[str, tuple[list[str], Path]]:
    """Every run, by name, world by world, in RECIPES' order within a world."""
    out = {}
    for layout in args.layouts:
        for seed in args.seeds:
            for split in args.splits:
                for row in args.layout_rows[layout]:
                    name = run_name(layout, split, seed, row)
                    out[name] = ([*world(layout, split, seed, args.outfits), *recipe(row)], OUT / "runs" / f"outfits{args.outfits}" / name)
    return out


def table_rows(metrics: dict[str, dict], layout: str, split: str, seed: int, rows: list[str]) -> dict[str, dict[str, float]]:
    """The table's rows for one world, from its runs' metrics.json."""
    named = {row: run_name(layout, split, seed, row) for row in rows}
    first = metrics[named[rows[0]]]
    out = {BASELINE: {k: first[f"baseline/{k}"] for k in METRICS}}
    out |= {row: {k: metrics[name][f"test/{k}"] for k in METRICS} for row, name in named.items()}
    if first.get(f"oracle/{METRICS[0]}") is not None:
        out[ORACLE] = {k: first[f"oracle/{k}"] for k in METRICS}
    return out


def targets(summary: dict, make_train: dict | None, split: str) -> list[str]:
    """The issue's three targets on this table, each with its numbers (left out where its rows are
    missing); the type-aware one is set on the nondisjoint split only."""

    def beats(row: str, reference: str, metric: str) -> tuple[float, float]:
        """mean gain of ``row`` over ``reference`` and twice the larger seed-to-seed std of the two."""
        gain = summary[row][metric][0] - summary[reference][metric][0]
        return gain, 2 * max(summary[row][metric][1], summary[reference][metric][1])

    lines = []
    if split == "nondisjoint" and UNIFORM in summary and any(row in summary for row in TYPE_AWARE):
        best = max((row for row in TYPE_AWARE if row in summary), key=lambda row: summary[row]["compatibility_auc"][0])
        gain, bar = beats(best, UNIFORM, "compatibility_auc")
        met = gain >= 0.03 and gain > bar
        lines.append(
            f"- {'met' if met else '**not met**'}: type-aware beats the single space by >= 0.03 AUC and > 2 std: {best}, {gain:+.3f} AUC (2 std = {bar:.3f})"
        )
    if UNIFORM in summary and any(row in summary for row in MINERS):
        for metric in METRICS:
            gains = {row: beats(row, UNIFORM, metric) for row in MINERS if row in summary}
            row, (gain, bar) = max(gains.items(), key=lambda item: item[1][0] - item[1][1])
            met = gain > bar
            lines.append(
                f"- {'met' if met else '**not met**'}: a miner beats uniform sampling by > 2 std ({HELD_OUT_METRICS[metric]}): best {row}, {gain:+.3f} (2 std = {bar:.3f})"
            )
    if make_train and ORACLE in summary:
        trained = [row for row in summary if row not in (BASELINE, ORACLE, MAKE_TRAIN)]
        for metric in ("triplet_accuracy", "compatibility_auc"):
            best = max(trained, key=lambda row: summary[row][metric][0])
            start, ceiling, reached = make_train[metric][0], summary[ORACLE][metric][0], summary[best][metric][0]
            closed = (reached - start) / (ceiling - start)
            lines.append(
                f"- {'met' if closed >= 0.5 else '**not met**'}: the best row closes >= half the gap from make train to the oracle "
                f"({HELD_OUT_METRICS[metric]}): {best}, {reached:.3f} from {start:.3f} towards {ceiling:.3f}: {closed:.0%} closed"
            )
    return lines


def markdown(results: dict, args, commands: dict[str, str]) -> str:
    seeds = " ".join(map(str, args.seeds))
    rows = "".join(f" {flag} {value}" for flag, value in (("--rows", args.rows_given), ("--layout-rows", args.layout_rows_given)) if value)
    lines = [
        "# Compatibility methods on the benchmark world",
        "",
        f"Produced by `python experiments/compatibility.py --seeds {seeds} --splits {' '.join(args.splits)} "
        f"--layouts {' '.join(args.layouts)} --outfits {args.outfits}{rows}` on 2 CPU cores. Each cell is the mean ± std "
        f"over seeds {seeds} (population std): each seed is another world and another training seed. Every "
        "trained row is the seed's head-only recipe (frozen ImageNet tf_efficientnet_lite0, the "
        "Linear-BatchNorm-Dropout-Linear head trains; `model.trainable_stages=0`), except those marked "
        "\"last stage fine-tuned\": they follow make train's recipe, in which the backbone's last stage "
        "learns too (`model.trainable_stages=1`). Each is tested on its best validation checkpoint. The "
        "commands of every row are listed at the end.",
        "",
        "- **CTL layout** (`data=synthetic`): held-out triplets, the FITB file and real against random "
        "same-category outfits, as `make train` is scored.",
        "- **Polyvore layout** (`data=synthetic_polyvore`): the dataset's own `compatibility_test.txt` and "
        "`fill_in_blank_test.json` (the standard protocol); triplet accuracy from one triplet per test outfit.",
        "",
    ]
    if "polyvore" not in args.layouts:
        lines += [
            "This file holds the CTL layout only. `python experiments/compatibility.py --reuse-runs` adds the "
            f"Polyvore layout's {len(args.seeds) * len(args.splits) * len(default_rows('polyvore'))} runs.",
            "",
        ]
    for key, result in results.items():
        summary = result["summary"]
        lines += [f"## {key}", "", "| method | " + " | ".join(HELD_OUT_METRICS[m] for m in METRICS) + " |", "|---|---|---|---|"]
        for row, values in summary.items():
            lines.append(f"| {row} | " + " | ".join(f"{values[m][0]:.3f} ± {values[m][1]:.3f}" for m in METRICS) + " |")
        lines += ["", "Targets:", "", *result["targets"], ""]
    lines += [
        NOTES,
        PUBLISHED,
        "## Commands",
        "",
        "Each row's run in the first world of the tables (the script varies the layout, split and seed):",
        "",
    ]
    lines += [f"- {row}: `{command}`" for row, command in commands.items()]
    return "\n".join(lines) + "\n"


NOTES = """## Reading the tables

- The baseline is the untrained head on frozen ImageNet features, measured at the start of the first
  row's runs. The trained rows follow, then the reference rows, then the oracle: the generator's
  likelihood on the true attributes, scored on the same held-out sets (the task's ceiling). `make train` (CTL layout only) is the default recipe, which also
  fine-tunes the backbone's last stage, from `experiments/benchmark_world.json` (same worlds and
  seeds). Where this run left SoftTriple out (`--rows`; one class per training outfit makes it 0.2 to
  0.8 s a step on 2 cores), its CTL-layout row comes from the runs of
  `experiments/benchmark_world_softtriple.md`: the same recipe (head only, one epoch), worlds and seeds.
  The Polyvore layout has no make train reference (nor the fine-tuned row), so its tables judge the
  first two targets only; its SoftTriple row is run here, on the same recipe.
- Uniform sampling trains on 16 sampled triplets per outfit and epoch for 8 epochs (7,200 steps of 64
  triplets). Outfit-grouped rows train on batches of 32 outfits x 4 items for about as many steps
  (40 epochs of 182 at 5,000 outfits: 7,280); "every in-batch triplet" separates what grouping does
  from what a miner adds. Batch-hard keeps each anchor's farthest positive and closest negative only.
- The type-aware rows measure each pair of items in the subspace of its two categories, for training,
  FITB, compatibility and triplet accuracy alike (`model=type_aware`, its loss's L1 mask and L2
  embedding regularisers at the paper's weights).
- The fine-tuned row is make train's recipe (the last stage learns too, 3 epochs) with type-aware
  learned masks instead of the single space. It enters the third target only; the first two compare
  head-only rows.
- A gain is judged against twice the larger seed-to-seed std of the two rows it compares. The
  type-aware target is set on the nondisjoint split, so the disjoint tables do not repeat it.
"""


# Rows taken from experiments/benchmark_world*.json (CTL layout, same worlds and seeds at 5,000
# outfits): make train, the reference of the third target, and SoftTriple where this run left it out.
REFERENCES = {
    MAKE_TRAIN: ("benchmark_world.json", "make train"),
    "SoftTriple (1 epoch; the runs of experiments/benchmark_world_softtriple.md)": ("benchmark_world_softtriple.json", "SoftTriple"),
}


def default_rows(layout: str) -> list[str]:
    """The rows run without --rows: every one, the fine-tuned ones in the CTL layout only (they serve
    the third target alone, and its reference, make train, exists in that layout only)."""
    return list(RECIPES) if layout == "ctl" else HEAD_ONLY


def with_references(summary: dict, found: dict) -> dict:
    """``summary`` with the reference rows ``found`` after the trained rows and before the oracle."""
    rows = {row: values for row, values in summary.items() if row != ORACLE}
    return rows | found | ({ORACLE: summary[ORACLE]} if ORACLE in summary else {})


def references(split: str, rows: list[str]) -> dict[str, dict]:
    """The rows of :data:`REFERENCES` for ``split`` that exist, SoftTriple only if not run here."""
    out = {}
    for label, (file, prefix) in REFERENCES.items():
        path = HERE / file
        if path.is_file() and not (prefix == "SoftTriple" and any(row.startswith("SoftTriple") for row in rows)):
            table = json.loads(path.read_text()).get(split, {})
            found = [row for row in table if row.startswith(prefix)]
            if found:
                out[label] = {m: table[found[0]][m] for m in METRICS}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--splits", nargs="+", default=["nondisjoint", "disjoint"])
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--outfits", type=int, default=5000)
    parser.add_argument(
        "--rows", nargs="+", type=int, help="RECIPES by number (default: all): " + "; ".join(f"{i} {r}" for i, r in enumerate(RECIPES))
    )
    parser.add_argument(
        "--layout-rows",
        nargs="+",
        default=[],
        metavar="LAYOUT=N,N",
        help="the rows of one layout, where they differ from --rows (polyvore=0,3,6)",
    )
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (they share the cores)")
    parser.add_argument("--reuse-runs", action="store_true", help="reuse the metrics of runs already in outputs/compatibility")
    parser.add_argument("--out", type=Path, default=HERE / "compatibility")
    args = parser.parse_args()
    args.rows_given = " ".join(map(str, args.rows or []))
    args.layout_rows_given = " ".join(args.layout_rows)
    chosen = {layout: args.rows for layout in args.layouts}
    for item in args.layout_rows:
        layout, _, numbers = item.partition("=")
        if layout not in chosen:
            parser.error(f"--layout-rows {item}: {layout!r} is not one of the layouts run ({', '.join(args.layouts)})")
        chosen[layout] = [int(n) for n in numbers.split(",")]
    args.layout_rows = {
        layout: default_rows(layout) if numbers is None else [row for i, row in enumerate(RECIPES) if i in numbers]
        for layout, numbers in chosen.items()
    }
    plan = planned(args)
    metrics = runs.train_all(plan, args.reuse_runs, args.parallel)
    results = {}
    for layout in args.layouts:
        for split in args.splits:
            per_seed = [table_rows(metrics, layout, split, seed, args.layout_rows[layout]) for seed in args.seeds]
            summary = runs.summarise(per_seed)
            if layout == "ctl" and args.outfits == 5000 and args.seeds == [0, 1, 2]:
                summary = with_references(summary, references(split, args.layout_rows[layout]))
            result = {"summary": summary, "per_seed": per_seed, "targets": targets(summary, summary.get(MAKE_TRAIN), split)}
            results[f"{layout} layout, {split}"] = result
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    commands = {}
    for layout in args.layouts:
        first = (layout, args.splits[0], args.seeds[0])
        commands |= {row: runs.shown(*plan[run_name(*first, row)]) for row in args.layout_rows[layout] if row not in commands}
    text = markdown(results, args, commands)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
