"""What the frozen recipe's graph step costs the host, apart from the step's own work (GPU.md, session 18).

    python experiments/benchmarks/frozen_step_host_cost.py [--data .bench-data/predict-host-cost] [--outfits 3000] [--triplets 20000] [--repeats 5]

On an H200 the frozen + cache epoch took 1.87 s against the issue's 1.5 s (session 13), with 0.45 ms of
kernels a step against 1.55 ms a step in all: the host bounded it. ``model.cuda_graph=step`` (session
14) replays each step's forward, backward and Adam update from one CUDA graph; what is left on the host
is Lightning's loop and optimizer wrapper, the module's loop and the replay's own bookkeeping. This
times that remainder on the CPU: the seed recipe's fixed-shape epoch (ResNet18's cached features,
batch 64, ``model.steps_per_call=16``, ``model.cuda_graph=step``) with the recorded step replaced by
one that returns its outputs without running, so that only the host's work around it is timed:

* the epoch, median of ``--repeats`` fits, less the step's recording (timed apart: on a GPU it is
  paid once a fit), per optimizer step, and that figure times the seed epoch's 1,211 steps;
* within it, Lightning's ``optimizer.step()`` after each replay (it counts the step and calls the
  hooks; the update already ran in the graph);
* on a host without a GPU, what Lightning's ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` adds to each Adam step
  (torch's capture health check asks NVML for the device count at every step until CUDA is
  initialised, which on such a host it never is); a GPU host caches the count once CUDA starts, so
  it is left out of the projection.

The CUDA launches a GPU adds (the graph's, and those of the few ops outside it, which here run as plain
CPU ops) are not in this figure. It prints one line and writes ``experiments/benchmarks/frozen-step-host-cost.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import timeit
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning.core.optimizer import LightningOptimizer

from ctl_lightning.benchmarks.gpu import SEED_TRIPLETS, STEPS_PER_CALL, Step, _datamodule, _steps, epoch
from ctl_lightning.benchmarks.machine import machine_info
from ctl_lightning.data.sources import SyntheticCtl
from ctl_lightning.models import member_steps

OUT = Path(__file__).with_name("frozen-step-host-cost.json")
SEED_STEPS = math.ceil(SEED_TRIPLETS / 64)  # the seed-scale frozen epoch: 1,211 steps of 64 triplets
SEED_GOAL_S = 1.5  # issue 13's frozen + cache epoch on one H100
# The GPU's kernel time a step of the same step's work (cuda_graph=true, fused Adam), from session 13's H200 trace.
H200_RESULTS = Path(__file__).with_name("gpu-h200-session13") / "call3-seed" / "gpu-results.json"
H200_PROFILE = "frozen + feature cache, 16 steps a call, CUDA graph, fused Adam"


class Timed:
    """Replaces ``owner.name`` with a wrapper that adds each call's wall time to ``seconds``."""

    def __init__(self, owner, name: str):
        self.seconds, self.calls = 0.0, 0
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        setattr(owner, name, timed)

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def record_without_running(run):
    """``member_steps._record`` for the CPU: runs the step once for its outputs; each replay then returns
    them without running anything, as a graph's replay costs the host no op."""
    outputs = run()
    return lambda: outputs


def nvml_check_us(repeats: int = 2000) -> dict[str, float]:
    """One Adam step over one small parameter, with Lightning's NVML-based CUDA check and without."""
    parameter = torch.nn.Parameter(torch.zeros(8))
    parameter.grad = torch.zeros(8)
    optimizer = torch.optim.Adam([parameter])
    saved = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    try:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
        with_check = timeit.timeit(optimizer.step, number=repeats) / repeats
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK")
        without = timeit.timeit(optimizer.step, number=repeats) / repeats
    finally:
        if saved is not None:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = saved
    return {"adam_step_us": 1e6 * with_check, "adam_step_without_nvml_check_us": 1e6 * without}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(".bench-data/predict-host-cost"))
    parser.add_argument("--outfits", type=int, default=3000)
    parser.add_argument("--triplets", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    member_steps.GRAPH_DEVICES = ("cuda", "cpu")
    member_steps._record = record_without_running
    dm = _datamodule(SyntheticCtl(args.data, seed=0, outfits=args.outfits, scenes=10), args.triplets, 64, 64, 0, False)
    recording = Timed(member_steps.StepGraph, "__init__")
    lightning_step = Timed(LightningOptimizer, "step")
    fits = []
    for _ in range(args.repeats + 1):  # the first fit warms up
        recording.reset()
        lightning_step.reset()
        result = epoch(dm, False, True, True, Step(STEPS_PER_CALL, cuda_graph="step"))
        fits.append((result["epoch_s"] - recording.seconds, lightning_step.seconds, lightning_step.calls))
    fits = fits[1:]
    steps = _steps(dm)
    step_ms = 1000 * float(np.median([seconds for seconds, *_ in fits])) / steps
    lightning_ms = 1000 * float(np.median([seconds / calls for _, seconds, calls in fits]))
    nvml = nvml_check_us()
    nvml_ms = (nvml["adam_step_us"] - nvml["adam_step_without_nvml_check_us"]) / 1000 if not torch.cuda.is_available() else 0.0
    gpu_host_ms = step_ms - nvml_ms
    kernel_ms = json.loads(H200_RESULTS.read_text())["profiles"][H200_PROFILE]["gpu_kernel_ms_per_step"]
    result = {
        "triplets": len(dm.train_triplets),
        "steps": steps,
        "repeats": args.repeats,
        "host_ms_per_step": step_ms,
        "lightning_optimizer_step_ms": lightning_ms,
        "nvml_check_ms_per_step": nvml_ms,
        **nvml,
        "host_ms_per_step_less_nvml_check": gpu_host_ms,
        "seed_epoch_host_s": gpu_host_ms * SEED_STEPS / 1000,
        "h200_kernel_ms_per_step": kernel_ms,
        "seed_epoch_kernels_s_h200": kernel_ms * SEED_STEPS / 1000,
        "goal_s": SEED_GOAL_S,
        "epochs_s": [seconds for seconds, *_ in fits],
        "machine": machine_info(),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{steps} steps, median of {args.repeats} fits: {step_ms:.3f} ms of host a step around a replay that does no work "
        f"(Lightning's optimizer.step() {lightning_ms:.3f} ms of it; NVML check {nvml_ms:.3f} ms, on this host only); "
        f"x {SEED_STEPS} seed steps: {result['seed_epoch_host_s']:.2f} s of host against {result['seed_epoch_kernels_s_h200']:.2f} s "
        f"of H200 kernels and the {SEED_GOAL_S} s goal -> {OUT}"
    )


if __name__ == "__main__":
    main()
