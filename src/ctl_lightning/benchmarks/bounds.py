"""What bounds the GPU goals of issue 13 that the trainer misses, measured (`bench/gpu.sh --parts bounds`).

* **The frozen recipe's step.** The same step as the trainer's (the head over cached features, the
  project's triplet loss, Adam), over the same epoch of triplets, three ways in one run:
  - ``lightning``: the trainer's epoch through the device store (the figure of the goal);
  - ``eager``: the step in a plain loop, each batch deduplicated on the host beforehand, so nothing
    waits on the GPU: what is left is PyTorch's own per-op cost, without Lightning or a data loader;
  - ``cuda graph``: that step captured once and replayed, at the fixed shape of batches that are not
    deduplicated (every triplet member its own row), since a graph needs one shape: the floor.
  The feature values do not matter to the time: random features of the cache's shape stand in.
* **The catalog build's batch size.** Predict through the device store at several batch sizes: each
  batch costs the host a fixed few milliseconds (Lightning's predict loop, the writer), so larger
  batches leave the GPU less idle.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ctl_lightning.losses import TripletLoss
from ctl_lightning.models.heads import EmbeddingHead

FEATURES = 512  # ResNet18's pooled features: what the feature cache holds for the seed-scale recipe


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_parts(device: torch.device, features: int):
    torch.manual_seed(0)
    head = EmbeddingHead(features).to(device).train()
    loss = TripletLoss(margin=0.2)
    return head, loss


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda", cache_enabled=False)


def shuffled(triplets: np.ndarray, seed: int = 0) -> np.ndarray:
    """``triplets`` in an epoch's order, as the trainer's sampler (``EpochShuffle``) deals them: sampled
    triplets come grouped by outfit, and batches cut from that order share products, so they would hold
    far fewer distinct rows than the trainer's."""
    return triplets[torch.randperm(len(triplets), generator=torch.Generator().manual_seed(seed)).numpy()]


def eager_epoch(features: torch.Tensor, triplets: np.ndarray, batch_size: int) -> dict:
    """The frozen recipe's epoch as a plain loop over cached ``features`` (one row per product), the
    triplets in a shuffled order: deduplication on the host up front, no host sync. On the CPU,
    ``make bench`` sets it beside the trainer's cached epoch (``fastpaths.feature_cache``): what is
    left is Lightning's share."""
    triplets = shuffled(triplets)
    device = features.device
    head, loss_fn = _step_parts(device, features.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    batches = []
    for start in range(0, len(triplets), batch_size):
        rows, local = np.unique(triplets[start : start + batch_size].ravel(), return_inverse=True)
        batches.append((torch.from_numpy(rows).to(device), torch.from_numpy(local.reshape(-1, 3)).to(device)))
    _sync(device)
    start = time.perf_counter()
    for rows, local in batches:
        with _autocast(device):
            loss = loss_fn(head(features[rows]), None, local)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    seconds = time.perf_counter() - start
    return {"steps": len(batches), "epoch_s": seconds, "ms_per_step": 1000 * seconds / len(batches)}


def graph_epoch(features: torch.Tensor, triplets: np.ndarray, batch_size: int) -> dict:
    """The same step captured in one CUDA graph and replayed per batch (full batches only)."""
    device = features.device
    head, loss_fn = _step_parts(device, features.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3, capturable=True)
    steps = len(triplets) // batch_size
    rows = torch.from_numpy(shuffled(triplets)[: steps * batch_size].reshape(steps, -1)).to(device)  # [steps, 3B]
    local = torch.arange(3 * batch_size, device=device).view(batch_size, 3)
    static_rows = rows[0].clone()

    def step():
        with _autocast(device):
            loss = loss_fn(head(features[static_rows]), None, local)
        loss.backward()
        optimizer.step()
        return loss

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        static_rows.copy_(rows[i])
        graph.replay()
    _sync(device)
    seconds = time.perf_counter() - start
    return {"steps": steps, "epoch_s": seconds, "ms_per_step": 1000 * seconds / steps}


def step_floor(triplets: np.ndarray, products: int, batch_size: int, gpu: bool) -> dict:
    """The eager and (on a GPU) graph-captured epochs of the frozen recipe's step over ``triplets``."""
    device = torch.device("cuda" if gpu else "cpu")
    features = torch.randn(products, FEATURES, device=device)
    out = {"eager": eager_epoch(features, triplets, batch_size)}
    if gpu:
        try:
            out["cuda graph"] = graph_epoch(features, triplets, batch_size)
        except Exception as error:  # capture can fail on an op that syncs: recorded, the rest stands
            out["cuda graph"] = {"error": f"{type(error).__name__}: {error}"}
    return out
