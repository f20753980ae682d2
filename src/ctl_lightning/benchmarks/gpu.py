"""The seed-scale epoch on one GPU: `bench/gpu.sh` (CPU with --smoke).

The seed trained one epoch of 77,494 CTL triplets (ResNet18, 64 px, batch 64) in 7 hours on a GPU.
This runs the same epoch on synthetic data of that size, twice:

* fine-tuning: the whole ResNet18 trains, every batch embeds its unique products;
* the seed's frozen recipe: backbone features of every product computed once (the feature cache),
  then the head trains on them;

and measures catalog-build throughput (predict of every product, catalogs written) against pure
inference. Writes gpu-results.json and GPU-table.md into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from ctl_lightning.benchmarks import setup
from ctl_lightning.benchmarks.machine import machine_info
from ctl_lightning.data.datamodules import TripletsDataModule
from ctl_lightning.data.sources import SyntheticCtl
from ctl_lightning.retrieval.writer import CatalogWriter

SEED_TRIPLETS = 77_494


def _datamodule(root: Path, outfits: int, triplets: int, image_size: int, batch_size: int, workers: int, gpu: bool) -> TripletsDataModule:
    train_outfits = int(outfits * 0.8)
    per_outfit = int(np.ceil(triplets / (0.97 * train_outfits)))
    dm = TripletsDataModule(
        SyntheticCtl(root, seed=0, outfits=outfits),
        image_size=image_size,
        batch_size=batch_size,
        eval_batch_size=1024 if gpu else 128,
        num_workers=workers,
        triplets_per_outfit=per_outfit,
        val_fraction=0.02,
        seed=42,
        pin_memory=gpu,
    )
    dm.prepare_data()
    dm.setup("fit")
    if len(dm.train_triplets) < triplets:
        raise SystemExit(f"only {len(dm.train_triplets)} training triplets were sampled, need {triplets}")
    dm.train_triplets = dm.train_triplets[:triplets]
    return dm


def _trainer(gpu: bool, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="gpu" if gpu else "cpu",
        devices=1,
        precision="bf16-mixed" if gpu else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **kwargs,
    )


def _sync(gpu: bool) -> None:
    if gpu:
        torch.cuda.synchronize()


class _EpochClock(pl.Callback):
    """Wall time of the training epoch itself, apart from fit start (where the feature cache is built)."""

    def on_train_epoch_start(self, trainer, pl_module):
        _sync(trainer.accelerator.__class__.__name__ == "CUDAAccelerator")
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        _sync(trainer.accelerator.__class__.__name__ == "CUDAAccelerator")
        self.seconds = time.perf_counter() - self.start


def epoch(dm: TripletsDataModule, gpu: bool, freeze: bool) -> dict:
    dm.load_images = True
    model = setup.model("resnet18", pretrained=False, freeze_backbone=freeze, feature_cache="auto", embed_batch_size=dm.eval_batch_size)
    clock = _EpochClock()
    trainer = _trainer(gpu, max_epochs=1, callbacks=[*setup.fit_callbacks(dm), clock])
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    total = time.perf_counter() - start
    steps = len(dm.train_dataloader())
    return {
        "recipe": "frozen + feature cache" if freeze else "fine-tuning",
        "triplets": len(dm.train_triplets),
        "steps": steps,
        "epoch_s": clock.seconds,
        "fit_total_s": total,
        "fit_start_s (cache build, baseline)": total - clock.seconds,
        "triplets_per_s": len(dm.train_triplets) / clock.seconds,
        "feature_cache": model.cached_features is not None,
    }


def catalog_build(dm: TripletsDataModule, gpu: bool) -> dict:
    dm.load_images = True
    model = setup.model("resnet18", pretrained=False, feature_cache=False, embed_batch_size=dm.eval_batch_size)
    rows = dm.predict_rows
    with tempfile.TemporaryDirectory() as tmp:
        writer = CatalogWriter(Path(tmp) / "catalogs", dm, run_dir=tmp)
        trainer = _trainer(gpu, callbacks=[writer])
        start = time.perf_counter()
        trainer.predict(model, datamodule=dm, return_predictions=False)
        predict_s = time.perf_counter() - start
    device = torch.device("cuda" if gpu else "cpu")
    model = model.to(device).eval()
    host = [torch.from_numpy(dm.store.read(rows[i : i + dm.eval_batch_size])) for i in range(0, len(rows), dm.eval_batch_size)]
    if gpu:
        host = [x.pin_memory() for x in host]
    resident = [x.to(device) for x in host]

    def pure(batches) -> float:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            for x in batches[:2]:
                model.head(model.backbone(model.preprocess(x)))  # warm-up
            _sync(gpu)
            start = time.perf_counter()
            for x in batches:
                model.head(model.backbone(model.preprocess(x)))
            _sync(gpu)
            return time.perf_counter() - start

    from_host, on_device = pure(host), pure(resident)
    return {
        "products": len(rows),
        "predict_s": predict_s,
        "merge_s": writer.merge_seconds,
        "predict_img_per_s": len(rows) / predict_s,
        "pure_inference_img_per_s (uint8 tensors in host memory)": len(rows) / from_host,
        "pure_inference_img_per_s (tensors already on the device)": len(rows) / on_device,
        "ratio": from_host / predict_s,
    }


def table(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Device: {m.get('gpu', 'CPU only')}; CPU: {m['cpu']} ({m['cores']} cores); torch {m['torch']}; "
        f"mode: {results['mode']}; data: {results['data']['products']:,} products, {results['data']['seconds']:.0f} s to generate and prepare.",
        "",
        "| run | triplets | steps | epoch (s) | triplets/s | fit start (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["epochs"]:
        lines.append(
            f"| {r['recipe']} | {r['triplets']:,} | {r['steps']:,} | **{r['epoch_s']:.1f}** | {r['triplets_per_s']:,.0f} | "
            f"{r['fit_start_s (cache build, baseline)']:.1f} |"
        )
    c = results["catalog"]
    lines += [
        "",
        f"Catalog build: {c['products']:,} products in {c['predict_s']:.1f} s (of which merging the shards into the two "
        f"catalogs {c['merge_s']:.1f} s) = **{c['predict_img_per_s']:,.0f} img/s**, {c['ratio']:.2f} of pure inference on "
        f"uint8 tensors in host memory ({c['pure_inference_img_per_s (uint8 tensors in host memory)']:,.0f} img/s; "
        f"{c['pure_inference_img_per_s (tensors already on the device)']:,.0f} img/s with the tensors already on the device).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/gpu.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script end to end")
    parser.add_argument("--out", default="experiments/benchmarks/gpu")
    parser.add_argument("--data", default=".bench-data")
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.smoke
    if not gpu and not args.smoke:
        raise SystemExit("bench/gpu.sh: no GPU found; use --smoke to check the script on the CPU")
    torch.set_float32_matmul_precision("high")
    outfits, triplets, size, batch = (150, 256, 32, 16) if args.smoke else (20_000, SEED_TRIPLETS, 64, 64)
    workers = 0 if args.smoke else min(8, os.cpu_count() or 1)
    start = time.perf_counter()
    dm = _datamodule(Path(args.data), outfits, triplets, size, batch, workers, gpu)
    data = {
        "outfits": outfits,
        "products": len(dm.store),
        "image_size": size,
        "batch_size": batch,
        "workers": workers,
        "seconds": time.perf_counter() - start,
    }
    results = {
        "mode": "smoke (CPU)" if args.smoke else "full",
        "machine": machine_info(),
        "data": data,
        "epochs": [epoch(dm, gpu, freeze=False), epoch(dm, gpu, freeze=True)],
        "catalog": catalog_build(dm, gpu),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "GPU-table.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
