"""Training runs for the experiment scripts: `python train.py` as a user types it, and seed summaries.

Each run is one `python train.py OVERRIDES hydra.run.dir=RUN_DIR` subprocess whose metrics.json the
scripts read, so every cell of their tables is reproduced by the command they print next to it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent


def command(overrides: list[str], run_dir: Path) -> list[str]:
    return [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false"]


def shown(overrides: list[str], run_dir: Path) -> str:
    """The command of a run as a user types it in the repository (paths relative to it)."""
    return shlex.join(["python", *command(overrides, run_dir)[1:]]).replace(f"{REPO}/", "")


def train(overrides: list[str], run_dir: Path, reuse: bool, threads: int | None = None) -> dict:
    """One `python train.py` run (or, with ``reuse``, the one already in ``run_dir``); its metrics.json.

    ``threads`` caps the run's CPU threads, so that runs side by side do not oversubscribe the cores.
    """
    metrics = run_dir / "metrics.json"
    if reuse and metrics.is_file():
        return json.loads(metrics.read_text())
    env = os.environ | ({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})
    args = command(overrides, run_dir)
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(metrics.read_text())


def train_all(runs: dict[str, tuple[list[str], Path]], reuse: bool, parallel: int) -> dict[str, dict]:
    """Every run of ``runs`` (name -> overrides, run directory), ``parallel`` at a time; name -> metrics.

    The machine's cores are shared evenly between the runs in flight; a progress bar counts them.
    """
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None
    start = time.perf_counter()

    def one(name: str) -> tuple[str, dict]:
        overrides, run_dir = runs[name]
        return name, train(overrides, run_dir, reuse, threads)

    results: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=parallel) as pool, tqdm(total=len(runs), desc="train.py runs", unit="run") as bar:
        for name, metrics in pool.map(one, runs):
            results[name] = metrics
            bar.update()
            bar.set_postfix_str(f"{name} ({time.perf_counter() - start:.0f} s in)", refresh=True)
    return results


def summarise(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """row -> metric -> [mean, std] over seeds (population std of the seeds' values)."""
    out: dict[str, dict[str, list[float]]] = {}
    for row in per_seed[0]:
        out[row] = {}
        for metric in per_seed[0][row]:
            values = np.array([seed[row][metric] for seed in per_seed], dtype=np.float64)
            out[row][metric] = [float(values.mean()), float(values.std())]
    return out
