"""Training end to end: metrics, catalogs, sweeps, DDP, W&B, resume, determinism, eval from a checkpoint."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import TINY, compose_config, run_script, script_paths

from ctl_lightning.data.store import ProductStore
from ctl_lightning.evaluation.metrics import HELD_OUT_METRICS
from ctl_lightning.models.backbones import _hub_reachable
from ctl_lightning.pipeline import train
from ctl_lightning.retrieval.catalog import Catalog

pytestmark = pytest.mark.slow

METRIC_KEYS = [f"{prefix}/{key}" for prefix in ("test", "baseline") for key in HELD_OUT_METRICS]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _assert_catalogs_cover_the_store(run_dir: Path) -> None:
    similar, compatible = Catalog.load(run_dir / "catalogs" / "similar"), Catalog.load(run_dir / "catalogs" / "compatible")
    store = ProductStore.open(similar.resolve(similar.manifest["data"]["store"]))
    for catalog in (similar, compatible):
        assert np.array_equal(catalog.row_ids, np.arange(len(store))), "every product exactly once, in row-id order"
        norms = np.linalg.norm(np.asarray(catalog.embeddings), axis=1)
        unit = np.isclose(norms, 1.0, atol=1e-4)
        assert catalog.embeddings.dtype == np.float32 and np.all(unit | (norms == 0))
        assert int((~unit).sum()) == catalog.manifest["zero_vectors"], "all-zero vectors are counted, not hidden"
        assert list(catalog.table.keys) == list(store.table.keys)
        assert list(catalog.table.categories) == list(store.table.categories)
    assert similar.embeddings.shape[1] == 1280 and compatible.embeddings.shape[1] == 128
    assert similar.manifest["model"]["state_fingerprint"] == compatible.manifest["model"]["state_fingerprint"]
    assert similar.manifest["data"]["fingerprint"] == store.fingerprint


def test_tiny_run_reports_all_metrics_and_writes_catalogs(tiny_run):
    metrics = _metrics(tiny_run)
    for key in METRIC_KEYS:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["test/similar_style_at5"] == metrics["baseline/similar_style_at5"]  # frozen backbone
    _assert_catalogs_cover_the_store(tiny_run)
    assert (tiny_run / "recommendations.png").stat().st_size > 1000
    assert (tiny_run / "checkpoints" / "last.ckpt").is_file()


def test_eval_script_reproduces_the_runs_metrics_from_its_checkpoint(tiny_run, data_dir, tmp_path):
    checkpoint = tiny_run / "checkpoints" / "last.ckpt"  # one epoch: last is also the best
    result = run_script("eval.py", f"ckpt_path={checkpoint}", *script_paths(tmp_path, data_dir), "trainer.enable_progress_bar=false")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated, trained = _metrics(tmp_path / "run"), _metrics(tiny_run)
    for key in METRIC_KEYS:
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key
    _assert_catalogs_cover_the_store(tmp_path / "run")


def test_resnet18_without_pretrained_weights_runs_offline(data_dir, tmp_path):
    result = run_script("train.py", "model=resnet18", "model.pretrained=false", "loss.margin=0.2", *TINY, *script_paths(tmp_path, data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load((tmp_path / "run" / ".hydra" / "config.yaml").read_text())
    assert config["model"]["backbone"] == "resnet18" and config["loss"]["margin"] == 0.2
    assert Catalog.load(tmp_path / "run" / "catalogs" / "similar").embeddings.shape[1] == 512


@pytest.mark.skipif(_hub_reachable(), reason="the timm hub is reachable: resnet18 weights would download")
def test_pretrained_resnet18_offline_is_a_one_line_error(data_dir, tmp_path):
    result = run_script("train.py", "model=resnet18", *TINY, *script_paths(tmp_path, data_dir))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    line = [x for x in result.stderr.splitlines() if x.startswith("train.py: error:")]
    assert len(line) == 1 and "resnet18" in line[0] and "model.pretrained=false" in line[0]


def test_multirun_sweep_gives_each_job_its_own_directory(data_dir, tmp_path):
    result = run_script("train.py", "-m", "loss=triplet,softtriple", "loss.margin=0.1,0.2", *TINY, *script_paths(tmp_path, data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        seen.add((config["loss"]["_target_"].rsplit(".", 1)[-1], config["loss"]["margin"]))
        assert _metrics(job)["test/triplet_accuracy"] is not None
        assert (job / "catalogs" / "compatible" / "manifest.json").is_file()
    assert seen == {(loss, m) for loss in ("TripletLoss", "SoftTripleLoss") for m in (0.1, 0.2)}


def test_optuna_search_maximizes_validation_triplet_accuracy(data_dir, tmp_path):
    result = run_script(
        "train.py",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        *TINY,
        *script_paths(tmp_path, data_dir),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    values = [_metrics(job)["val/triplet_accuracy"] for job in (tmp_path / "sweep").iterdir() if (job / "metrics.json").is_file()]
    assert len(values) == 2 and best["best_value"] == pytest.approx(max(values))


def test_ddp_on_two_cpu_processes_writes_each_product_once(data_dir, tmp_path):
    result = run_script("train.py", "trainer=ddp_cpu", *TINY, *script_paths(tmp_path, data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_catalogs_cover_the_store(tmp_path / "run")
    metrics = _metrics(tmp_path / "run")
    assert all(0.0 <= metrics[key] <= 1.0 for key in METRIC_KEYS)


def test_wandb_runs_offline_without_credentials(data_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "WANDB_API_KEY": "", "NETRC": str(home / ".netrc")}
    result = run_script("train.py", "logger=wandb", *TINY, *script_paths(tmp_path, data_dir), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # The offline run's transaction log, read back with W&B's own inspector.
    log = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json", str(runs[0])],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    record = json.loads(log.stdout)
    assert record["state"] == "finished" and record["exit_code"] == 0
    metrics = _metrics(tmp_path / "run")
    for key in ("test/triplet_accuracy", "baseline/triplet_accuracy", "val/triplet_accuracy"):
        assert record["summary"][key] == pytest.approx(metrics[key], abs=1e-6)
    assert record["config"]["loss"]["margin"] == 0.2 and record["config"]["model"]["backbone"] == "tf_efficientnet_lite0"
    images = list((runs[0] / "files" / "media" / "images").rglob("*.png"))
    assert any("complementary" in p.name for p in images)


def _train(output: Path, data: Path, *overrides: str) -> dict:
    cfg = compose_config("train", output, data, [*TINY, "trainer.deterministic=true", "seed=7", *overrides])
    return train(cfg)


def test_resumed_run_ends_like_an_uninterrupted_one_and_seeded_runs_repeat(data_dir, tmp_path):
    straight = _train(tmp_path / "straight", data_dir, "trainer.max_epochs=3")
    again = _train(tmp_path / "again", data_dir, "trainer.max_epochs=3")
    _train(tmp_path / "stopped", data_dir, "trainer.max_epochs=1")
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    resumed = _train(tmp_path / "stopped", data_dir, "trainer.max_epochs=3", f"ckpt_path={last}")
    for key in [*METRIC_KEYS, "val/triplet_accuracy"]:
        if straight[key] is None or (isinstance(straight[key], float) and math.isnan(straight[key])):
            continue
        assert again[key] == straight[key], f"seeded deterministic runs differ in {key}"
        assert resumed[key] == pytest.approx(straight[key], abs=1e-7), f"resumed run differs in {key}"


def test_tensorboard_logger_records_the_test_metrics(data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = _train(tmp_path, data_dir, "logger=tensorboard")
    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    scalars, images = {}, set()
    for event_file in events:
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars[tag] = accumulator.Scalars(tag)[-1].value
        images.update(accumulator.Tags()["images"])
    assert scalars["test/triplet_accuracy"] == pytest.approx(metrics["test/triplet_accuracy"], abs=1e-6)
    assert "val/triplet_accuracy" in scalars and "train/loss_epoch" in scalars
    assert "recommendations/complementary" in images
