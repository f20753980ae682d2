"""In-batch miners: on hand-made embeddings they pick what their definition says, always within the
CTL protocol (negatives of the positive's category), and ``loss.miner=none`` trains as before."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import TINY, compose_config
from test_fast_paths import _training_losses

from ctl_lightning.config_checks import validate
from ctl_lightning.errors import CtlError
from ctl_lightning.losses import TripletLoss
from ctl_lightning.losses.mining import MINERS, outfit_triplets

TOP, BOTTOM = 0, 1

# Three outfits of a top and a bottom; rows are (outfit, category, 2-d embedding).
# The anchor (top of outfit 0) has one close and one far bottom of other outfits, and a top of
# another outfit closer still: a miner that ignored categories would take that top as the negative.
ITEMS = [
    (0, TOP, (1.0, 0.0)),  # 0 anchor
    (0, BOTTOM, (0.0, 1.0)),  # 1 its positive, at 90 degrees
    (1, TOP, (1.0, 0.05)),  # 2 another outfit's top, nearly on the anchor
    (1, BOTTOM, (0.8, 0.6)),  # 3 hardest bottom negative: closer to the anchor than the positive
    (2, TOP, (-1.0, 0.0)),  # 4
    (2, BOTTOM, (-0.6, 0.8)),  # 5 semihard bottom negative: farther than the positive, within the margin
]


def hand_made_batch():
    labels = torch.tensor([outfit for outfit, _, _ in ITEMS])
    categories = torch.tensor([category for _, category, _ in ITEMS])
    embeddings = torch.tensor([vector for _, _, vector in ITEMS])
    return embeddings, labels, categories


def as_set(triplets: torch.Tensor) -> set[tuple[int, int, int]]:
    return {tuple(t) for t in triplets.tolist()}


def assert_protocol(triplets: torch.Tensor, labels: torch.Tensor, categories: torch.Tensor) -> None:
    a, p, n = triplets.T
    assert (labels[a] == labels[p]).all() and (labels[n] != labels[a]).all()
    assert (categories[a] != categories[p]).all() and (categories[n] == categories[p]).all()


def test_outfit_triplets_are_every_triplet_the_protocol_allows():
    g = torch.Generator().manual_seed(0)
    labels, categories = torch.randint(0, 5, (30,), generator=g), torch.randint(0, 4, (30,), generator=g)
    expected = {
        (a, p, n)
        for a, p, n in itertools.permutations(range(30), 3)
        if labels[a] == labels[p] != labels[n] and categories[a] != categories[p] == categories[n]
    }
    triplets = outfit_triplets(labels, categories)
    assert as_set(triplets) == expected and len(triplets) == len(expected) > 50


def test_batch_hard_takes_the_closest_negative_of_the_positives_category():
    embeddings, labels, categories = hand_made_batch()
    mined = as_set(TripletLoss(0.2, miner="batch_hard").miner(embeddings, labels, categories))
    assert (0, 1, 3) in mined  # not the closer top 2: a top cannot stand in for a bottom
    assert all(a != 0 or n == 3 for a, _, n in mined)


def test_semihard_keeps_negatives_between_the_positive_and_the_margin():
    # Squared distances from the anchor: positive 1 at 2.0, bottom 3 at 0.4 (hard), bottom 5 at 3.2,
    # which is 1.2 beyond the positive: easy for a margin of 0.5, semihard for 1.5.
    embeddings, labels, categories = hand_made_batch()
    mined = as_set(TripletLoss(0.5, miner="semihard").miner(embeddings, labels, categories))
    assert not any(a == 0 for a, _, _ in mined)
    mined = as_set(TripletLoss(1.5, miner="semihard").miner(embeddings, labels, categories))
    assert {t for t in mined if t[0] == 0} == {(0, 1, 5)}


def test_multi_similarity_pairs_become_protocol_triplets():
    embeddings, labels, categories = hand_made_batch()
    mined = TripletLoss(0.2, miner="multi_similarity").miner(embeddings, labels, categories)
    assert (0, 1, 3) in as_set(mined)  # the negative closer than the positive is a hard pair
    assert_protocol(mined, labels, categories)


@pytest.mark.parametrize("name", MINERS[1:])
def test_every_miner_keeps_the_protocol_and_trains(name):
    g = torch.Generator().manual_seed(1)
    labels, categories = torch.arange(8).repeat_interleave(4), torch.arange(4).repeat(8)
    embeddings = torch.randn(32, 16, generator=g, requires_grad=True)
    loss = TripletLoss(0.2, miner=name)
    mined = loss.miner(embeddings, labels, categories)
    assert len(mined) > 0
    assert_protocol(mined, labels, categories)
    loss(embeddings, labels, mined).backward()
    assert embeddings.grad.abs().sum() > 0


def test_bad_miner_and_batching_are_one_line_errors(tmp_path):
    with pytest.raises(CtlError, match=r"loss.miner must be one of none, batch_hard, semihard, multi_similarity"):
        TripletLoss(miner="hardest")
    cfg = compose_config("train", tmp_path, tmp_path, ["loss.miner=hardest", "data.batching=pairs", "data.items_per_outfit=1"])
    with pytest.raises(CtlError) as error:
        validate(cfg)
    message = str(error.value)
    assert "\n" not in message
    for expected in ("loss.miner='hardest'", "data.batching='pairs'", "data.items_per_outfit=1"):
        assert expected in message


# The first training losses of the default config (seed 7, TINY with the default last stage trained,
# model.trainable_stages=1) before miners existed (commit d825515), recorded on the AMD EPYC host with
# two threads, and the tolerance each has on any host and thread count. The first comes before any
# update. The second, after one update, moves by 3.5e-6 on one thread (the reductions' order). From the
# third on, the CPU's own kernels (the Intel host's AVX-512 and AMX against AMD's AVX2) round the trained
# stage's updates differently, and the same code gives losses up to 4e-4 away on the Intel host. A change
# to the default path moves the first loss by far more than 1e-6.
LOSSES_BEFORE_MINERS = [0.3253078, 0.2723016, 0.3269763, 0.2172068, 0.2616166, 0.2307188]
TOLERANCES = [1e-6, 1e-5, 2e-3, 2e-3, 2e-3, 2e-3]


@pytest.mark.slow
def test_default_path_trains_exactly_as_before_miners(data_dir, tmp_path):
    cfg = compose_config("train", tmp_path, data_dir, TINY)
    assert cfg.loss.miner == "none" and cfg.data.batching == "triplets"
    losses, model = _training_losses(
        data_dir, tmp_path, "seed=7", "trainer.max_epochs=1", "+trainer.limit_val_batches=0", "model.trainable_stages=1"
    )
    assert model.loss.miner is None
    assert len(losses) >= len(LOSSES_BEFORE_MINERS)
    for step, (loss, before, tolerance) in enumerate(zip(losses, LOSSES_BEFORE_MINERS, TOLERANCES)):
        assert loss == pytest.approx(before, abs=tolerance), f"step {step}"
