"""How far a change of kernels moves the fine-tuning recipe's losses, step by step (GPU.md, session 12).

    python experiments/benchmarks/compile_rounding.py [--data .bench-data/compile-rounding] [--batches 8] [--seeds 0 1 2]

For each seed (the initial weights and the triplets sampled), the same tiny fine-tuning run (ResNet18 from random weights, 32 px, dropout 0 so that nothing is drawn
at random inside the step, Adam, two epochs of at most ``--batches`` batches through the device store:
7 are all the tiny world has), five ways:

* eager, twice: the run repeats exactly;
* ``model.compile=default`` with the aot_eager backend: the captured graph run with eager kernels;
* ``model.compile=default`` with inductor: the graph compiled into its own kernels (about a minute on 2 cores);
* eager with oneDNN off: PyTorch's own convolution kernels instead of oneDNN's, the same math rounded otherwise.

It prints, for each way, the mean ± std over the seeds of |loss - eager loss| at each of the first
steps and of its largest over the run, and writes every loss to ``experiments/benchmarks/compile-rounding.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from ctl_lightning.benchmarks import setup

OUT = Path(__file__).with_name("compile-rounding.json")
RUNS = {  # name: (model.compile settings, oneDNN on)
    "eager": ({}, True),
    "eager, again": ({}, True),
    "compiled, aot_eager": ({"compile": "default", "compile_backend": "aot_eager"}, True),
    "compiled, inductor": ({"compile": "default", "compile_backend": "inductor"}, True),
    "eager, oneDNN off": ({}, False),
}


class _Losses(pl.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def fit(dm, seed: int, batches: int, compiled: dict, onednn: bool) -> tuple[list[float], float]:
    pl.seed_everything(seed, verbose=False)
    model = setup.model("resnet18", pretrained=False, seed=seed, freeze_backbone=False, feature_cache=False, dropout=0.0, **compiled)
    losses = _Losses()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        callbacks=[losses],
    )
    start, enabled = time.perf_counter(), torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = onednn
    try:
        trainer.fit(model, datamodule=dm)
    finally:
        torch.backends.mkldnn.enabled = enabled
    return losses.losses, time.perf_counter() - start


def _spread(values: np.ndarray) -> str:
    return f"{values.mean():.1e} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=".bench-data/compile-rounding")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in RUNS}
    for seed in args.seeds:
        dm = setup.datamodule(Path(args.data), outfits=150, image_size=32, batch_size=64, triplets_per_outfit=4, seed=42 + seed)
        dm.device_store = True  # the GPU's data path, here on the CPU: gathered and deduplicated after the transfer
        for name, (compiled, onednn) in RUNS.items():
            losses, seconds = fit(dm, seed, args.batches, compiled, onednn)
            runs[name].append({"seed": seed, "losses": losses, "fit_s": seconds})
        for name in RUNS:
            run, reference = runs[name][-1], runs["eager"][-1]
            run["abs_gap"] = np.abs(np.array(run["losses"]) - np.array(reference["losses"])).tolist()
    summary = {}
    for name, seeded in runs.items():
        gaps = np.array([run["abs_gap"] for run in seeded])  # [seeds, steps]
        summary[name] = {"first_steps": [_spread(gaps[:, step]) for step in range(4)], "largest": _spread(gaps.max(axis=1))}
        print(
            f"{name:22s} |loss - eager| (mean ± std over {len(args.seeds)} seeds) first steps: "
            f"{', '.join(summary[name]['first_steps'])}   largest: {summary[name]['largest']}"
        )
    record = {"command": "python experiments/benchmarks/compile_rounding.py", "batches": args.batches, "seeds": args.seeds}
    OUT.write_text(json.dumps({**record, "summary": summary, "runs": runs}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
