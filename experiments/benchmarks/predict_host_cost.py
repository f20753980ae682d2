"""What a catalog build costs the host, apart from the model (GPU.md, session 16).

    python experiments/benchmarks/predict_host_cost.py [--data .bench-data/predict-host-cost] [--outfits 3000] [--batch 1024] [--repeats 8]

On a GPU the catalog build reached 0.32 of pure inference (session 13): the host's work per batch
(Lightning's predict loop, the device store's gather, the catalog writer) and at the end (publishing
both catalogs) sits between the card's batches. This runs the real predict through the device store
on the CPU (``data.device_store=true``, ResNet18's catalog dims) with the model's own work replaced by
zeros, so that only that host work is timed:

* the whole predict and the publish (from the last batch to the published catalogs), median of
  ``--repeats`` after one warm-up;
* next to them, in the same run, hashing the weights' fingerprint (ResNet18), the step that publish
  included until session 16 and that now runs in a thread while predict does;
* in one more predict, the ops that need a batch's data on the host after its transfer (on a GPU each
  waits for all queued work), counted by :class:`~ctl_lightning.benchmarks.device_waits.DeviceWaits`.

It prints one line and writes ``experiments/benchmarks/predict-host-cost.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ctl_lightning.benchmarks import setup
from ctl_lightning.benchmarks.device_waits import DeviceWaits
from ctl_lightning.benchmarks.gpu import _datamodule, _trainer
from ctl_lightning.benchmarks.machine import machine_info
from ctl_lightning.data.sources import SyntheticCtl
from ctl_lightning.models.fingerprint import host_fingerprint, host_state
from ctl_lightning.retrieval.writer import CatalogWriter

OUT = Path(__file__).with_name("predict-host-cost.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(".bench-data/predict-host-cost"))
    parser.add_argument("--outfits", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()

    dm = _datamodule(SyntheticCtl(args.data, seed=0, outfits=args.outfits, scenes=10), None, 16, 64, 0, False)
    dm.eval_batch_size, dm.device_store = args.batch, True
    model = setup.model("resnet18", pretrained=False, feature_cache=False)

    def zeros(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # _embed_batch's output, without the model
        rows = batch["row_ids"]
        return {"row_ids": rows, "similar": torch.zeros(len(rows), model.backbone.num_features), "compatible": torch.zeros(len(rows), 128)}

    model._embed_batch = zeros
    after_transfer = {"batches": 0, "ops": 0}

    def predict() -> tuple[float, float]:
        dm.resident = None  # a fresh device store, loading in the background, as in a new process
        with tempfile.TemporaryDirectory() as tmp:
            writer = CatalogWriter(Path(tmp) / "catalogs", dm, run_dir=tmp)
            start = time.perf_counter()
            _trainer(False, callbacks=[writer]).predict(model, datamodule=dm, return_predictions=False)
            return time.perf_counter() - start, writer.merge_seconds

    predict()  # warm-up
    times = [predict() for _ in range(args.repeats)]
    hashes = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        host_fingerprint(host_state(model.state_dict()))
        hashes.append(time.perf_counter() - start)

    handle = dm.on_after_batch_transfer

    def counted(batch, dataloader_idx):
        with DeviceWaits() as waits:
            out = handle(batch, dataloader_idx)
        after_transfer["batches"] += 1
        after_transfer["ops"] += len(waits.ops)
        return out

    dm.on_after_batch_transfer = counted
    predict()
    dm.on_after_batch_transfer = handle

    def median_ms(values) -> float:
        return 1000 * float(np.median(values))

    result = {
        "products": len(dm.predict_rows),
        "batch_size": args.batch,
        "batches": int(np.ceil(len(dm.predict_rows) / args.batch)),
        "repeats": args.repeats,
        "predict_ms": median_ms([t for t, _ in times]),
        "publish_ms": median_ms([p for _, p in times]),
        "fingerprint_hash_ms": median_ms(hashes),
        "device_waits_after_transfer": after_transfer,
        "machine": machine_info(),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['products']} products in {result['batches']} batches of {args.batch}, median of {args.repeats}: "
        f"predict {result['predict_ms']:.1f} ms, publish {result['publish_ms']:.1f} ms; hashing the weights "
        f"{result['fingerprint_hash_ms']:.1f} ms; ops needing a batch's data on the host after its transfer: {after_transfer['ops']} "
        f"in {after_transfer['batches']} batches -> {OUT}"
    )


if __name__ == "__main__":
    main()
