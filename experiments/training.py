"""Run the training experiments and write experiments/training.{md,json}.

    .venv/bin/python experiments/training.py

Each experiment is a plain `python train.py ...` command (listed in the output), run into its own
folder under outputs/experiments/; the default one starts from an empty data folder, so its time
includes generating and preparing the synthetic data, as `make train` does on a fresh clone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = REPO / "outputs" / "experiments"

# The toy world, as these figures were first measured (then the default world, trained 25 epochs);
# the benchmark world's figures come from experiments/benchmark_world.py.
EXPERIMENTS = [
    (
        "make train (toy world, fresh data folder)",
        ["data=toy", "trainer.max_epochs=25", "paths.data_dir=outputs/experiments/fresh-data"],
        "run",
    ),
    ("experiment=seed_paper, offline (random-init ResNet18)", ["data=toy", "experiment=seed_paper", "model.pretrained=false"], "run"),
    ("experiment=seed_paper with the ImageNet default backbone", ["data=toy", "experiment=seed_paper", "model=efficientnet_lite0"], "run"),
    ("triplet vs SoftTriple (toy world)", ["-m", "data=toy", "trainer.max_epochs=25", "loss=triplet,softtriple"], "sweep"),
]
KEYS = [
    "test/triplet_accuracy",
    "test/fitb_accuracy",
    "test/compatibility_auc",
    "test/similar_style_at5",
    "baseline/triplet_accuracy",
    "baseline/fitb_accuracy",
    "baseline/compatibility_auc",
    "val/triplet_accuracy",
]


def run(name: str, overrides: list[str], mode: str, index: int) -> list[dict]:
    folder = OUT / f"exp{index}"
    shutil.rmtree(folder, ignore_errors=True)
    if any("fresh-data" in o for o in overrides):  # that run starts from an empty data folder
        shutil.rmtree(REPO / "outputs" / "experiments" / "fresh-data", ignore_errors=True)
    command = [
        "python",
        "train.py",
        *overrides,
        f"hydra.run.dir={folder}/run",
        f"hydra.sweep.dir={folder}/sweep",
        "trainer.enable_progress_bar=false",
    ]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *command[1:]], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    runs = [folder / "run"] if mode == "run" else sorted(p for p in (folder / "sweep").iterdir() if (p / "metrics.json").is_file())
    records = []
    for run_dir in runs:
        overrides_used = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
        config = " ".join(o for o in overrides_used if not o.startswith("trainer.enable_progress_bar")) or "(defaults)"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        records.append(
            {
                "experiment": name,
                "command": " ".join(command[:-3]),
                "overrides": config,
                "seconds": seconds,
                "epochs": metrics.get("epochs"),
                **{k: metrics.get(k) for k in KEYS},
            }
        )
    return records


def fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(records: list[dict]) -> str:
    lines = [
        "# Training experiments on the toy world",
        "",
        "The toy world (`data=toy`) is saturated: every method lands near its ceiling, so these runs check that",
        "the pipeline works, not which method is better; `benchmark_world.md` compares methods. The table below",
        "was measured before the validation outfits were split off ahead of triplet sampling; a rerun differs slightly.",
        "Each row is one run with one seed, without a mean ± std: a gap between two rows (triplet against SoftTriple)",
        "is not evidence for either method. `benchmark_world.md` compares methods as mean ± std over 3 seeds.",
        "",
        "Produced by `python experiments/training.py`, which runs each command below from the repository root",
        "on this machine (2 CPU cores, no GPU) and reads back each run's `metrics.json`. Seconds are wall-clock",
        "for the whole command (a sweep: all its jobs), including start-up, the baseline, test and predict.",
        "",
        "| experiment | job | held-out triplet acc. | baseline | FITB | baseline | AUC | baseline | similar style@5 | best val acc. | epochs | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['experiment']} | `{r['overrides']}` | **{fmt(r['test/triplet_accuracy'])}** | {fmt(r['baseline/triplet_accuracy'])} | "
            f"{fmt(r['test/fitb_accuracy'])} | {fmt(r['baseline/fitb_accuracy'])} | {fmt(r['test/compatibility_auc'])} | "
            f"{fmt(r['baseline/compatibility_auc'])} | {fmt(r['test/similar_style_at5'])} | {fmt(r['val/triplet_accuracy'])} | "
            f"{r['epochs']} | {r['seconds']:.0f} |"
        )
    lines += ["", "Commands:", ""] + [f"- `{c}`" for c in dict.fromkeys(r["command"] for r in records)]
    return "\n".join(lines) + "\n"


def main() -> None:
    records = [r for i, (name, overrides, mode) in enumerate(EXPERIMENTS) for r in run(name, overrides, mode, i)]
    (HERE / "training.json").write_text(json.dumps(records, indent=2) + "\n")
    table = markdown(records)
    notes = HERE / "training_notes.md"
    (HERE / "training.md").write_text(table + ("\n" + notes.read_text() if notes.is_file() else ""))
    print(table)


if __name__ == "__main__":
    main()
