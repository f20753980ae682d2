"""The README's sweep of DDP jobs, `python train.py -m trainer=ddp loss.margin=0.1,0.2`, run and
checked on the machine at hand (`bench/gpu.sh --parts ddp_sweep`; issue 10).

The CPU test (`tests/test_scaleout.py`) runs the same sweep with `trainer=ddp_cpu`; this runs it on
every GPU of a machine, where Lightning and NCCL take the real paths, and checks what that test
checks: one sweep directory, exactly one job directory per job and no other run directory, each job
with its metrics and with catalogs that hold every product exactly once, and how many ranks each
job's DDP run had. :func:`check` serves both, so the CPU test also keeps this checker honest.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from ctl_lightning.data.store import ProductStore
from ctl_lightning.errors import CtlError
from ctl_lightning.retrieval.catalog import Catalog

REPO = Path(__file__).resolve().parents[3]
# A small world and ResNet18 without pretrained weights (a GPU host may have no weights package):
# the sweep's mechanics are under test, not the model's accuracy.
MARGINS = (0.1, 0.2)  # the sweep: one job each
OVERRIDES = [
    f"loss.margin={','.join(map(str, MARGINS))}",
    "model=resnet18",
    "model.pretrained=false",
    "model.trainable_stages=0",
    "data.source.outfits=400",
    "data.source.scenes=30",
    "data.image_size=64",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "recommendation_examples=2",
]


class SweepFailed(RuntimeError):
    pass


def run(root: Path, gpu: bool, timeout_s: int = 900) -> dict:
    """Run the sweep with its outputs under ``root`` and return :func:`check`'s account of them."""
    command = [
        "train.py",
        "-m",
        f"trainer={'ddp' if gpu else 'ddp_cpu'}",
        *OVERRIDES,
        f"paths.root_dir={root}",
        f"paths.data_dir={root / 'data'}",
    ]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SweepFailed(f"python {' '.join(command)} exited with {result.returncode}: {result.stderr.strip()[-1500:]}")
    found = check(root / "outputs")
    ranks = torch.cuda.device_count() if gpu else 2  # trainer=ddp: every GPU; ddp_cpu: 2 processes
    if found["world_sizes"] != [ranks] * len(MARGINS):
        raise SweepFailed(f"DDP world sizes {found['world_sizes']}, expected {ranks} for each of the {len(MARGINS)} jobs")
    return {"command": "python " + " ".join(command[:-2]), "seconds": seconds, **found}


def check(outputs: Path, jobs: int = len(MARGINS)) -> dict:
    """The sweep of ``jobs`` jobs under ``outputs`` (train.py's default run and sweep directories):
    each job with its margin, test metrics, catalog rows, and each submitted job's DDP world size.
    Raises :class:`SweepFailed` where a job is missing, a run directory is stray, or a job's outputs
    are missing or a catalog misses or repeats a product."""
    try:
        sweeps = sorted((outputs / "train" / "multiruns").iterdir())
        if len(sweeps) != 1:
            raise SweepFailed(f"{len(sweeps)} sweep directories under {outputs}: a rank re-ran the command line")
        sweep = sweeps[0]
        found = sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        if [p.name for p in found] != [str(i) for i in range(jobs)]:
            raise SweepFailed(f"{sweep}: job directories {[p.name for p in found]}, expected {jobs}")
        run_dirs = {p.parent for p in outputs.rglob(".hydra")}
        if run_dirs != set(found):
            raise SweepFailed(f"run directories {sorted(str(p.relative_to(outputs)) for p in run_dirs)} are not the sweep's jobs")
        return {"sweep_dir": sweep.name, "jobs": [_job(job) for job in found], "world_sizes": _world_sizes(sweep / ".submitit")}
    except (OSError, KeyError, ValueError, CtlError) as error:  # a job's outputs missing or unreadable
        raise SweepFailed(f"{outputs}: {type(error).__name__}: {error}") from error


def _job(job: Path) -> dict:
    metrics = json.loads((job / "metrics.json").read_text())
    rows = {}
    for name in ("similar", "compatible"):
        catalog = Catalog.load(job / "catalogs" / name)
        store = ProductStore.open(catalog.resolve(catalog.manifest["data"]["store"]))
        if not np.array_equal(catalog.row_ids, np.arange(len(store))):
            raise SweepFailed(f"{job}/catalogs/{name}: row ids are not every product of the store exactly once")
        rows[name] = len(catalog.row_ids)
    return {
        "job": job.name,
        "margin": yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["loss"]["margin"],
        "test/triplet_accuracy": metrics["test/triplet_accuracy"],
        "catalog_rows": rows,
    }


def _world_sizes(submitit: Path) -> list[int]:
    """Each submitted job's DDP world size, as Lightning reported it when its ranks joined ("MEMBER: k/n")."""
    sizes = []
    for folder in sorted(p for p in submitit.iterdir() if p.is_dir()):
        members = {int(n) for log in folder.glob("*_log.err") for n in re.findall(r"MEMBER: \d+/(\d+)", log.read_text())}
        sizes += sorted(members)
    return sizes
