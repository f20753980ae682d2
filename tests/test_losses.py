"""Losses: the seed's triplet formula, and SoftTriple with its centers regulariser and optimizer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctl_lightning.errors import CtlError
from ctl_lightning.losses import SoftTripleLoss, TripletLoss
from ctl_lightning.losses.softtriple import SameClassCentersRegularizer


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(9, 16, generator=g)
    triplets = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 4, 8]])
    labels = torch.tensor([0, 0, 1, 2, 2, 3, 1, 1, 0])
    return embeddings, labels, triplets


def test_triplet_loss_is_the_seed_formula_on_unit_vectors(batch):
    embeddings, labels, triplets = batch
    e = F.normalize(embeddings, dim=1)
    a, p, n = e[triplets[:, 0]], e[triplets[:, 1]], e[triplets[:, 2]]
    for margin in (0.2, 1.0):
        expected = torch.relu(((a - p) ** 2).sum(1) - ((a - n) ** 2).sum(1) + margin).mean()
        assert torch.allclose(TripletLoss(margin)(embeddings, labels, triplets), expected, atol=1e-6)
    expected_cos = torch.relu((a * n).sum(1) - (a * p).sum(1) + 0.2).mean()
    assert torch.allclose(TripletLoss(0.2, distance="cosine")(embeddings, labels, triplets), expected_cos, atol=1e-6)


def test_triplet_loss_is_zero_when_every_triplet_is_satisfied():
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0]])
    assert TripletLoss(0.2)(embeddings, None, torch.tensor([[0, 1, 2]])).item() == 0.0


def test_unknown_distance_is_rejected():
    with pytest.raises(CtlError, match=r"loss.distance"):
        TripletLoss(0.2, distance="manhattan")


def test_softtriple_regulariser_is_the_papers_formula():
    # Qian et al. 2019, eq. 11: R = sum_j sum_{t<s} sqrt(2 + delta - 2 <w_j^t, w_j^s>) / (C K (K-1)),
    # i.e. half the mean over the C K (K-1) / 2 pairs; computed here by a plain loop.
    C, K = 3, 4
    regulariser = SameClassCentersRegularizer(num_classes=C, centers_per_class=K)
    weights = torch.randn(C * K, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = [[[float(v) for v in F.normalize(weights[j * K + t], dim=0)] for t in range(K)] for j in range(C)]
    total = 0.0
    for j in range(C):
        for t in range(K):
            for s in range(t + 1, K):
                total += math.sqrt(2 + 1e-5 - 2 * sum(a * b for a, b in zip(w[j][t], w[j][s])))
    assert regulariser(weights).item() == pytest.approx(total / (C * K * (K - 1)), rel=1e-9)


def test_softtriple_applies_tau_times_the_regulariser(batch):
    embeddings, labels, triplets = batch
    torch.manual_seed(0)
    with_tau = SoftTripleLoss(num_classes=4, embedding_dim=16, tau=0.2)
    without = SoftTripleLoss(num_classes=4, embedding_dim=16, tau=0.0)
    without.load_state_dict(with_tau.state_dict())
    reg = SameClassCentersRegularizer(4, 10)(with_tau.centers.t())
    assert reg > 0
    assert torch.allclose(with_tau(embeddings, labels, triplets) - without(embeddings, labels, triplets), 0.2 * reg, atol=1e-5)


def test_softtriple_centers_reach_the_optimizer_and_learn(batch):
    from ctl_lightning.models.module import CompatibilityModule

    _embeddings, labels, triplets = batch
    loss = SoftTripleLoss(num_classes=4, embedding_dim=128)
    module = CompatibilityModule(loss=loss, optimizer=lambda params: torch.optim.SGD(params, lr=0.5), pretrained=False)
    optimizer = module.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(loss.centers) in optimized
    before = loss.centers.detach().clone()
    features = torch.randn(9, module.backbone.num_features)
    value = loss(module.head(features), labels, triplets)
    optimizer.zero_grad()
    value.backward()
    optimizer.step()
    assert not torch.equal(before, loss.centers.detach())


def test_softtriple_needs_a_class_for_every_product(batch):
    embeddings, _labels, triplets = batch
    with pytest.raises(CtlError, match="label -1"):
        SoftTripleLoss(num_classes=4, embedding_dim=16)(embeddings, torch.full((9,), -1), triplets)


def test_softtriple_relaxed_similarity_equals_the_librarys():
    from pytorch_metric_learning import losses

    ours = SoftTripleLoss(num_classes=7, embedding_dim=16).loss
    library = losses.SoftTripleLoss(num_classes=7, embedding_size=16)
    library.fc.data.copy_(ours.fc.data)
    embeddings = torch.randn(5, 16)
    torch.testing.assert_close(ours.get_logits(embeddings), library.get_logits(embeddings), atol=1e-6, rtol=0)


def test_softtriple_stays_float32_under_bf16_autocast(batch):
    embeddings, labels, triplets = batch
    torch.manual_seed(0)
    loss = SoftTripleLoss(num_classes=4, embedding_dim=16)
    expected = loss(embeddings, labels, triplets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(embeddings, labels, triplets)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-6)
    # bf16 embeddings, as a head under autocast gives them: computed in float32, centers not cast in place.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(embeddings.bfloat16(), labels, triplets)
    assert value.dtype == torch.float32 and loss.centers.dtype == torch.float32
    torch.testing.assert_close(value, loss(embeddings.bfloat16().float(), labels, triplets), atol=1e-6, rtol=1e-6)


def test_softtriple_validation_logs_accuracy_but_no_loss(batch):
    from ctl_lightning.models.module import CompatibilityModule

    _, _, triplets = batch
    module = CompatibilityModule(loss=SoftTripleLoss(num_classes=4, embedding_dim=128), optimizer=torch.optim.Adam, pretrained=False)
    module.cached_features = torch.randn(9, module.backbone.num_features)
    logged = []
    module.log = lambda name, *args, **kwargs: logged.append(name)
    # Validation outfits have no class (label -1): SoftTriple cannot score them, and must not be asked to.
    module.validation_step({"row_ids": torch.arange(9), "labels": torch.full((9,), -1), "triplets": triplets}, 0)
    assert logged == ["val/triplet_accuracy"]
