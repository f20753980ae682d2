"""Losses: the seed's triplet formula, and SoftTriple with its centers regulariser and optimizer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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
    with pytest.raises(ValueError, match="loss.distance"):
        TripletLoss(0.2, distance="manhattan")


def test_softtriple_regulariser_is_the_papers_within_class_sum():
    regulariser = SameClassCentersRegularizer(num_classes=3, centers_per_class=4)
    weights = torch.randn(12, 8)
    w = F.normalize(weights, dim=1).view(3, 4, 8)
    terms = [torch.sqrt(2 + 1e-5 - 2 * (w[c, t] * w[c, s]).sum()) for c in range(3) for t in range(4) for s in range(t + 1, 4)]
    assert torch.allclose(regulariser(weights), torch.stack(terms).mean(), atol=1e-5)


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

    embeddings, labels, triplets = batch
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
    embeddings, labels, triplets = batch
    with pytest.raises(ValueError, match="label -1"):
        SoftTripleLoss(num_classes=4, embedding_dim=16)(embeddings, torch.full((9,), -1), triplets)


def test_softtriple_relaxed_similarity_equals_the_librarys():
    from pytorch_metric_learning import losses

    ours = SoftTripleLoss(num_classes=7, embedding_dim=16).loss
    library = losses.SoftTripleLoss(num_classes=7, embedding_size=16)
    library.fc.data.copy_(ours.fc.data)
    embeddings = torch.randn(5, 16)
    torch.testing.assert_close(ours.get_logits(embeddings), library.get_logits(embeddings), atol=1e-6, rtol=0)
