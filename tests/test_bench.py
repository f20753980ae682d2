"""The benchmark code runs and measures what it says (no timing is asserted: speed belongs in make bench)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO

from ctl_lightning.benchmarks import fastpaths, retrieval
from ctl_lightning.benchmarks.report import write_report


def test_forward_pass_accounting_counts_unique_products_per_batch():
    triplets = np.array([[0, 1, 2], [0, 3, 2], [4, 5, 6], [4, 5, 7]])
    result = fastpaths._forward_passes(triplets, batch_size=4)
    assert result["images_without_dedup"] == 12 and result["images_with_dedup"] == 8
    assert result["saved_fraction"] == pytest.approx(1 / 3)


def test_retrieval_bench_compares_engines_on_the_same_answers():
    result = retrieval.bench_catalog(5_000, bandwidth_gbs=10.0, repeats=1, batch=16)
    assert result["faiss_top10_overlap"] > 0.99 and result["float16_recall_at_10"] > 0.9
    assert result["bound_single_s"] == pytest.approx(5_000 * 128 * 4 / 10e9)
    for key in ("exact_single", "faiss_flat_single", "exact_batch16", "faiss_flat_batch16"):
        assert result[key]["median_s"] > 0


@pytest.mark.slow
def test_gpu_script_smoke_runs_on_the_cpu(tmp_path):
    """bench/gpu.sh --smoke: the seed-scale script's code path end to end, tiny, without a GPU."""
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), "--smoke", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "data")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "gpu-results.json").read_text())
    fine_tune, frozen = results["epochs"]
    assert fine_tune["triplets"] == frozen["triplets"] == 256 and not fine_tune["feature_cache"] and frozen["feature_cache"]
    assert results["catalog"]["products"] == results["data"]["products"] > 0
    assert "| fine-tuning | 256 |" in (tmp_path / "out" / "GPU-table.md").read_text()


@pytest.mark.slow
def test_quick_bench_writes_every_section(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ctl_lightning.benchmarks", "--quick", "--out", str(tmp_path), "--data", str(tmp_path / "data")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results-quick.json").read_text())
    assert results["loader"]["workers=0"]["ratio"] > 1
    assert results["catalog"]["throughput"]["products"] > 0 and len(results["catalog"]["peak_rss"]) == 2
    text = (tmp_path / "RESULTS-quick.md").read_text()
    for heading in (
        "## Loader",
        "## Loader overhead",
        "## Frozen-backbone feature cache",
        "## Unique images",
        "## Catalog build",
        "## Retrieval",
        "## Image queries: onnxruntime against torch",
    ):
        assert heading in text
    rewritten = write_report(results, tmp_path / "again.md")
    assert rewritten.read_text() == text
