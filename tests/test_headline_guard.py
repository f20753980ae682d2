"""A guard on the headline: training must beat the untrained ImageNet baseline by a clear margin.

On the benchmark world the baseline is close to chance, so a loss that is broken, a head that never
trains or swapped labels leave the trained model at or below it, and this test fails: the last two
tests plant the second and the third (which is also the first's commonest form, a sign error).

How the margin was chosen: `python train.py` with :data:`GUARD` (what :func:`gain` runs) was run with
`seed=S data.source.seed=S` for S = 0, 1, 2 (each a different world and training seed), with the
default recipe (the backbone's last stage and the head train, 3 epochs). The trained-minus-baseline
gaps in held-out triplet accuracy were 0.200, 0.125 and 0.242 (mean 0.189, standard deviation 0.048):
the margin, 0.04, is at most the mean less three standard deviations (0.044), and above what a model
that never trains gives (the second test).
"""

from __future__ import annotations

import pytest
from helpers import train_in_process

# A small world: 1,200 outfits (240 test triplets), 64 px, the default recipe and epochs.
GUARD = ["data.source.outfits=1200", "data.source.scenes=10", "trainer.enable_progress_bar=false", "recommendation_examples=0"]
MARGIN = 0.04


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One data folder for the three tests: the world and its product store are built once."""
    return tmp_path_factory.mktemp("guard-data")


def gain(tmp_path, world, *overrides: str) -> float:
    """The run is train.py's, in this process (the metrics are those of ``python train.py``, to the bit)."""
    metrics = train_in_process(tmp_path, world, [*GUARD, *overrides])
    return metrics["test/triplet_accuracy"] - metrics["baseline/triplet_accuracy"]


@pytest.mark.slow
def test_training_beats_the_imagenet_baseline(tmp_path, world):
    assert gain(tmp_path, world) >= MARGIN


@pytest.mark.slow
def test_a_head_that_never_trains_fails_the_guard(tmp_path, world):
    """The guard can fail: with a learning rate of 1e-12 (the config checks refuse 0) the head stays
    random, the last stage stays pretrained, and the gain vanishes (-0.096 measured with lr=0). Weights
    that cannot move need no more than one step an epoch to show it, which keeps the test short."""
    assert gain(tmp_path, world, "optimizer.lr=1e-12", "+trainer.limit_train_batches=1") < MARGIN


@pytest.mark.slow
def test_swapped_labels_fail_the_guard(tmp_path, world):
    """The guard can fail on a bug that trains: positives and negatives swapped (equally, a loss with its
    sign error) train the model away from compatibility. A fifth of each epoch's steps shows it: with
    that fifth the gain measured -0.088 swapped, against +0.058 for the correct loss (which clears the
    margin) and +0.129 for the full epochs of the first test."""
    assert gain(tmp_path, world, "loss._target_=faulty_losses.SwappedTripletLoss", "+trainer.limit_train_batches=0.2") < MARGIN
