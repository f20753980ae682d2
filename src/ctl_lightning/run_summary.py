"""End-of-run summary: the metric table on the console and a picture of recommendations.

The picture is saved as ``recommendations.png`` in the run directory and sent to the loggers that
take images (W&B, TensorBoard), so a run can be judged by eye as well as by its numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from ctl_lightning.errors import CtlError
from ctl_lightning.evaluation.metrics import HELD_OUT_METRICS

log = logging.getLogger(__name__)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _gain(key: str, trained: float | None, baseline: float | None) -> str:
    if trained is None or baseline is None:
        return "n/a"
    # Similar products use backbone features: with a frozen backbone they are the baseline's own.
    return "same features" if key == "similar_style_at5" and trained == baseline else f"{trained - baseline:+.4f}"


def print_metric_table(metrics: dict, keys: Sequence[str]) -> None:
    """Trained against the untrained baseline and, where the data knows its latent truth, the
    oracle: the task's ceiling, so that the room left is visible."""
    has_oracle = any(metrics.get(f"oracle/{key}") is not None for key in keys)
    title = "Test metrics (baseline: pretrained backbone features, no training"
    table = Table(title=title + ("; oracle: the generator's likelihood on the true attributes)" if has_oracle else ")"))
    for column in ("metric", "trained", "baseline", "gain", *(["oracle"] if has_oracle else [])):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key in keys:
        trained, baseline = metrics.get(f"test/{key}"), metrics.get(f"baseline/{key}")
        oracle = [_fmt(metrics.get(f"oracle/{key}"))] if has_oracle else []
        table.add_row(HELD_OUT_METRICS.get(key, key), _fmt(trained), _fmt(baseline), _gain(key, trained, baseline), *oracle)
    Console().print(table)


def log_recommendation_grid(catalog_dir: Path, loggers: Sequence, examples: int, seed: int) -> Path | None:
    """Complementary recommendations for a few test products, drawn and sent to the image loggers."""
    if examples <= 0 or not (catalog_dir / "compatible").is_dir():
        return None
    from ctl_lightning.retrieval.recommend import Recommender
    from ctl_lightning.retrieval.render import Thumbnails, render_recommendations

    try:
        recommender = Recommender(catalog_dir)
    except CtlError as error:
        log.warning(f"no recommendation picture: {error}")
        return None
    pool = recommender.table.rows_in_split("test")
    pool = pool if len(pool) else np.arange(len(recommender))
    chosen = np.random.default_rng(seed).choice(pool, size=min(examples, len(pool)), replace=False)
    recs = [recommender.recommend_complementary(recommender.product_query(int(recommender.similar.row_ids[p])), k=5) for p in chosen]
    path = render_recommendations(recs, Thumbnails.of(recommender), catalog_dir.parent / "recommendations.png")
    for logger in loggers:
        name = type(logger).__name__
        if name == "WandbLogger":
            logger.log_image(key="recommendations/complementary", images=[str(path)])
        elif name == "TensorBoardLogger":
            logger.experiment.add_image("recommendations/complementary", np.asarray(Image.open(path).convert("RGB")), dataformats="HWC")
            logger.experiment.flush()  # the run's last event: nothing else would write it out
    log.info(f"recommendation picture: {path}")
    return path
