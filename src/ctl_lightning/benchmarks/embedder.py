"""Image queries: the exported embedder on onnxruntime against torch, on the same crops in one process.

This is what ctl-serve spends per uploaded image once it is decoded and cropped: the crop through
the backbone and the head. Measured for lone uploads (batch 1) and for a full micro-batch (16, the
server's default), with the default backbone (ImageNet weights) on store crops of the default size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ctl_lightning.benchmarks import setup
from ctl_lightning.retrieval.embedder import ImageEmbedder
from ctl_lightning.retrieval.onnx_embedder import OnnxEmbedder, export_graph
from ctl_lightning.timing import measure, rate

BATCHES = (1, 16)


def run(dm, folder: Path, images: int, repeats: int) -> dict:
    """Both runtimes with one thread each, then with the machine's default threads (torch's and onnxruntime's)."""
    module = setup.model().eval()
    size = dm.store.size
    folder.mkdir(parents=True, exist_ok=True)
    meta = export_graph(module, size, folder, "benchmark")
    crops = dm.store.read(np.arange(min(256, len(dm.store))))
    default_threads = torch.get_num_threads()
    out = {"image_size": size, "crops_compared": len(crops), "load_average_before": os.getloadavg()[0], "threads": {}}
    try:
        for threads in dict.fromkeys((1, default_threads)):
            torch.set_num_threads(threads)
            embedders = {"torch": ImageEmbedder(module, size), "onnxruntime": OnnxEmbedder(folder, meta, threads=threads)}
            pairs = zip(embedders["onnxruntime"].embed_crops(crops), embedders["torch"].embed_crops(crops))
            out["max_difference"] = float(max(np.abs(a - b).max() for a, b in pairs))
            row = out["threads"][str(threads)] = {}
            for batch in BATCHES:
                chunks = [crops[i : i + batch] for i in range(0, images, batch)]
                for name, embedder in embedders.items():
                    timing = measure(lambda e=embedder, c=chunks: [e.embed_crops(x) for x in c], repeats=repeats)
                    row[f"{name}_batch{batch}"] = rate(images, timing)
                row[f"onnxruntime_over_torch_batch{batch}"] = (
                    row[f"onnxruntime_batch{batch}"]["per_s"] / row[f"torch_batch{batch}"]["per_s"]
                )
    finally:
        torch.set_num_threads(default_threads)
    out["load_average_after"] = os.getloadavg()[0]
    return out
