"""A small run ``ctl-serve`` can serve, made offline in seconds without training.

A toy-world product store, a randomly initialised model saved as the run's checkpoint (its
fingerprint in the manifests) and both catalogs that model embedded, so image queries go through the
same code as for a trained run. The serve tests and the load test (``benchmarks/loadtest.py``) serve it;
the fault tests write catalogs of their own vectors with :func:`write_run_catalogs`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from ctl_lightning.data.sources import CtlSource
from ctl_lightning.data.store import ProductStore
from ctl_lightning.data.synthetic import SynthConfig, generate
from ctl_lightning.models.checkpoint import RUN_CONFIG
from ctl_lightning.models.fingerprint import state_fingerprint
from ctl_lightning.retrieval.catalog import KINDS
from ctl_lightning.retrieval.embedder import ImageEmbedder
from ctl_lightning.retrieval.merge import Shard, write_catalog

CONF = Path(__file__).resolve().parents[3] / "conf"
RANDOM_DIM = 8  # the width of write_run_catalogs' random vectors


def small_store(folder: Path, store_dir: Path, size: int = 16) -> ProductStore:
    """The product store of the CTL folder ``folder`` at ``size`` px, built once under ``store_dir``."""
    return CtlSource(folder, store_dir=store_dir).open_store(size, workers=1)


def toy_store(root: Path, outfits: int = 40, size: int = 16) -> ProductStore:
    """A toy-world CTL dataset of ``outfits`` outfits generated under ``root`` (once), and its store."""
    if not (root / "toy" / "ctl").is_dir():
        generate(SynthConfig(out=root / "toy", world="toy", outfits=outfits, styles=8, scenes=4, workers=1))
    return small_store(root / "toy" / "ctl", root / "stores", size)


def write_run_catalogs(run: Path, store: ProductStore, vectors: dict[str, np.ndarray] | None = None, model: dict | None = None) -> Path:
    """Both catalogs of a run over ``store`` (random unit vectors unless given), as predict writes them;
    ``model``: the manifests' model entry (default: no checkpoint, a made-up fingerprint)."""
    rows = store.table.positions
    rng = np.random.default_rng(0)
    for kind in KINDS:
        values = rng.normal(size=(len(rows), RANDOM_DIM)).astype(np.float32) if vectors is None else vectors[kind]
        values /= np.linalg.norm(values, axis=1, keepdims=True)
        dim = values.shape[1]
        shard = run / f"{kind}.bin"
        shard.parent.mkdir(parents=True, exist_ok=True)
        values.tofile(shard)
        manifest = {
            "model": model or {"backbone": "fake", "state_fingerprint": "f" * 20, "checkpoint": None},
            "config": {"path": None, "fingerprint": None},
            "data": {
                "store": os.path.relpath(store.path, run),
                "root": os.path.relpath(store.path.parent, run),
                "fingerprint": store.fingerprint,
                "image_size": store.size,
            },
            "run_dir": "../..",
            "kind": kind,
            "dim": dim,
        }
        write_catalog(run / "catalogs" / kind, rows, [Shard(rows, shard, dim)], store.table, manifest)
        shard.unlink()
    return run


def make_run(run: Path, store: ProductStore, seed: int) -> Path:
    """A run folder over ``store``: a random-init model's checkpoint (the default backbone at 32 px) and the catalogs it embeds."""
    torch.manual_seed(seed)
    config = OmegaConf.merge(OmegaConf.load(CONF / "model" / "efficientnet_lite0.yaml"), {"pretrained": False, "input_size": 32})
    module = instantiate(config, loss=nn.Identity(), optimizer=None).eval()
    (run / "checkpoints").mkdir(parents=True)
    torch.save(
        {"state_dict": module.state_dict(), RUN_CONFIG: {"model": OmegaConf.to_container(config)}}, run / "checkpoints" / "last.ckpt"
    )
    similar, compatible = ImageEmbedder(module, store.size).embed_crops(store.read(store.table.positions))
    model = {
        "backbone": config.backbone,
        "state_fingerprint": state_fingerprint(module.state_dict()),
        "checkpoint": "checkpoints/last.ckpt",
    }
    return write_run_catalogs(run, store, {"similar": similar, "compatible": compatible}, model)
