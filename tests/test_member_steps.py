"""The fixed-shape step (``model.steps_per_call``) trains exactly like today's deduplicated step: the
same losses step by step and the same weights, so its speed is not bought with another recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY, compose_config
from test_fast_paths import _fit as fit_recording_losses

from ctl_lightning.errors import CtlError, user_error
from ctl_lightning.losses import TripletLoss
from ctl_lightning.models import member_steps
from ctl_lightning.models.heads import EmbeddingHead
from ctl_lightning.pipeline import build


def _triplet_rows(generator: torch.Generator, batch: int = 32, products: int = 40) -> torch.Tensor:
    """Rows drawn from few products, so that triplets share members, as a real batch's do."""
    return torch.randint(0, products, (batch, 3), generator=generator)


def test_members_give_the_deduplicated_batch_loss_gradients_and_statistics():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 24, generator=generator)
    triplets = _triplet_rows(generator)
    torch.manual_seed(0)
    dedup_head = EmbeddingHead(24, hidden_dim=16, embedding_dim=8, dropout=0.0).train()
    member_head = EmbeddingHead(24, hidden_dim=16, embedding_dim=8, dropout=0.0).train()
    member_head.load_state_dict(dedup_head.state_dict())
    loss_fn = TripletLoss(margin=0.2)

    rows, inverse = torch.unique(triplets, sorted=True, return_inverse=True)
    assert len(rows) < triplets.numel()  # the batch has duplicates, so the weights matter
    dedup_loss = loss_fn(dedup_head(features[rows]), None, inverse)
    members = triplets.reshape(-1)
    member_loss = loss_fn(member_head.forward_members(features[members], members), None, torch.arange(members.numel()).view(-1, 3))
    dedup_loss.backward()
    member_loss.backward()

    torch.testing.assert_close(member_loss, dedup_loss, atol=1e-6, rtol=0)
    for (name, dedup), member in zip(dedup_head.named_parameters(), member_head.parameters(), strict=True):
        torch.testing.assert_close(member.grad, dedup.grad, atol=1e-6, rtol=1e-5, msg=name)
    for (name, dedup), member in zip(dedup_head.named_buffers(), member_head.buffers(), strict=True):
        torch.testing.assert_close(member, dedup, atol=1e-6, rtol=1e-5, msg=name)


def test_duplicate_members_share_one_dropout_mask():
    generator = torch.Generator().manual_seed(1)
    triplets = _triplet_rows(generator, products=10)
    members = triplets.reshape(-1)
    head = EmbeddingHead(24, hidden_dim=64, embedding_dim=8, dropout=0.5).train()
    out = head.forward_members(torch.randn(10, 24, generator=generator)[members], members)
    same = members[:, None] == members[None, :]
    distance = (out[:, None] - out[None, :]).abs().amax(-1)
    assert distance[same].max() == 0  # one product, one embedding
    assert distance[~same].min() > 0


def _fit(data_dir, tmp_path, *overrides: str):
    """test_fast_paths's run (2 epochs, deterministic), head only over cached features, no dropout."""
    losses, model, _, trainer = fit_recording_losses(data_dir, tmp_path, "model.feature_cache=true", "model.dropout=0", *overrides)
    return losses, model, trainer


@pytest.mark.slow
@pytest.mark.parametrize("device_store", ["false", "true"])
def test_several_steps_a_call_train_exactly_like_one_batch_a_call(data_dir, tmp_path, device_store):
    """Two epochs of the head-only recipe over cached features, 5 steps a trainer call (the last call
    of an epoch shorter, its last batch smaller): the same losses step by step, optimizer steps and
    weights as the deduplicated step, one batch a call, with the pixels on the host or the device."""
    store = f"data.device_store={device_store}"
    steps, stepped, stepped_trainer = _fit(data_dir, tmp_path / "steps", "model.steps_per_call=5", store)
    plain, plain_model, plain_trainer = _fit(data_dir, tmp_path / "plain", store)
    assert not stepped.automatic_optimization and plain_model.automatic_optimization
    assert len(steps) == len(plain) > 10
    assert len(plain) % 5 != 0 and stepped_trainer.global_step == plain_trainer.global_step == len(plain)
    np.testing.assert_allclose(steps, plain, atol=1e-5, rtol=0)
    _assert_same_training(stepped, stepped_trainer, plain_model, plain_trainer)


def _assert_same_training(stepped, stepped_trainer, plain_model, plain_trainer) -> None:
    # The first Linear's bias is left out: BatchNorm subtracts it again, so its gradient is zero but
    # for rounding, which Adam scales up to full steps in either run. So the head is compared in
    # training mode too, where that bias cancels: eval mode subtracts the running mean, which lags it.
    expected = dict(plain_model.head.named_parameters())
    for name, value in stepped.head.named_parameters():
        if name != "0.bias":
            torch.testing.assert_close(value, expected[name], atol=5e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(stepped.head[1].running_var, plain_model.head[1].running_var, atol=1e-5, rtol=1e-4)
    features = plain_model.cached_features[:256]
    torch.testing.assert_close(stepped.head.train()(features), plain_model.head.train()(features), atol=1e-4, rtol=1e-4)
    for key in ("val/triplet_accuracy", "train/loss_epoch", "train/triplet_accuracy"):
        assert float(stepped_trainer.callback_metrics[key]) == pytest.approx(float(plain_trainer.callback_metrics[key]), abs=1e-5)


@pytest.mark.slow
def test_the_update_recorded_in_the_step_trains_exactly_like_lightnings_update(data_dir, tmp_path, monkeypatch):
    """``model.cuda_graph=step`` with the CPU standing in for the device and the recorded step replayed
    eagerly: its warm-up steps leave no trace, Lightning counts every step and updates nothing more, and
    the epoch's last, smaller batch takes Lightning's update. The same losses step by step, optimizer
    steps and weights as the fixed-shape step without a graph. The capture itself needs a GPU
    (bench/gpu.sh)."""
    monkeypatch.setattr(member_steps, "GRAPH_DEVICES", ("cuda", "cpu"))
    records = []
    monkeypatch.setattr(member_steps, "_record", lambda run: records.append(run) or run)
    steps, stepped, stepped_trainer = _fit(data_dir, tmp_path / "graph", "model.steps_per_call=5", "model.cuda_graph=step")
    plain, plain_model, plain_trainer = _fit(data_dir, tmp_path / "plain", "model.steps_per_call=5")
    assert len(records) == 1  # one record serves both epochs
    assert all(p.grad is None for p in stepped.head.parameters())
    assert len(steps) == len(plain) > 10 and len(plain) % 5 != 0
    assert stepped_trainer.global_step == plain_trainer.global_step == len(plain)
    np.testing.assert_allclose(steps, plain, atol=1e-6, rtol=0)
    _assert_same_training(stepped, stepped_trainer, plain_model, plain_trainer)
    saved = stepped.optimizers().optimizer.state_dict()["state"]
    expected = plain_model.optimizers().optimizer.state_dict()["state"]
    assert [float(s["step"]) for s in saved.values()] == [float(s["step"]) for s in expected.values()] == [len(plain)] * len(saved)


def test_the_warm_up_before_a_record_is_undone():
    """What StepGraph's warm-up changes, weights, BatchNorm statistics and Adam's state (created by the
    warm-up, or there before it), is put back exactly."""
    head = EmbeddingHead(24, hidden_dim=16, embedding_dim=8, dropout=0.0).train()
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    features = torch.randn(40, 24)

    def step():
        optimizer.zero_grad()
        TripletLoss(margin=0.2)(head(features), None, torch.randint(0, 40, (16, 3))).backward()
        optimizer.step()

    for steps_before in (0, 2):
        for _ in range(steps_before):
            step()
        before = {k: v.clone() for k, v in head.state_dict().items()}
        state = {(i, k): v.clone() for i, s in optimizer.state_dict()["state"].items() for k, v in s.items()}
        restore = member_steps._snapshot(head, optimizer)
        for _ in range(3):
            step()
        assert not torch.equal(head.state_dict()["0.weight"], before["0.weight"])
        restore()
        for k, v in head.state_dict().items():
            assert torch.equal(v, before[k]), k
        after = {(i, k): v for i, s in optimizer.state_dict()["state"].items() for k, v in s.items()}
        assert set(after) == {(i, k) for i in range(len(list(head.parameters()))) for k in ("step", "exp_avg", "exp_avg_sq")}
        for key, value in after.items():
            assert torch.equal(value, state[key]) if state else not value.any(), key


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.steps_per_call=0"], "positive number of steps"),
        (["model.steps_per_call=4", "model.trainable_stages=1"], "trainable_stages=0"),
        (["model.steps_per_call=4", "model.freeze_backbone=false"], "the feature cache"),
        (["model.steps_per_call=4", "loss=softtriple"], "a loss without classes"),
        (["model.steps_per_call=4", "loss.miner=batch_hard"], "loss.miner=none"),
        (["model.cuda_graph=true"], "needs model.steps_per_call"),
        (["model.steps_per_call=4", "model.cuda_graph=always"], "model.cuda_graph must be false, true or step, got 'always'"),
        (["model.steps_per_call=4", "data.batching=outfits"], "data.batching=triplets"),
    ],
)
def test_other_recipes_are_a_clear_error(data_dir, tmp_path, overrides, message):
    with pytest.raises(Exception) as raised:  # Hydra wraps what a target raises
        build(compose_config("train", tmp_path, data_dir, [*TINY, *overrides]))
    assert message in str(user_error(raised.value))


@pytest.mark.parametrize("graph", ["true", "step"])
def test_cuda_graph_on_the_cpu_is_a_clear_error(data_dir, tmp_path, graph):
    with pytest.raises(CtlError, match=rf"model\.cuda_graph={graph} needs a CUDA device; this run trains on cpu"):
        _fit(data_dir, tmp_path, "model.steps_per_call=2", f"model.cuda_graph={graph}", "+trainer.limit_train_batches=1")


def test_an_update_recorded_in_the_step_refuses_other_optimizers_and_a_gradient_scaler(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(member_steps, "GRAPH_DEVICES", ("cuda", "cpu"))
    with pytest.raises(CtlError, match=r"model\.cuda_graph=step records Adam's update \(optimizer=adam\), not SGD"):
        _fit(
            data_dir, tmp_path / "sgd", "model.steps_per_call=2", "model.cuda_graph=step", "optimizer=sgd", "+trainer.limit_train_batches=1"
        )
    _, model, _ = build(compose_config("train", tmp_path, data_dir, [*TINY, "model.steps_per_call=2", "model.cuda_graph=step"]))
    from types import SimpleNamespace

    model._trainer = SimpleNamespace(world_size=1, precision_plugin=SimpleNamespace(scaler=object()), precision="16-mixed")
    with pytest.raises(CtlError, match=r"without the gradient scaler trainer\.precision=16-mixed needs"):
        model.setup("fit")


def test_ddp_is_a_clear_error(data_dir, tmp_path):
    """Several backward passes in one DDP forward break its gradient synchronisation: refused at setup."""
    from types import SimpleNamespace

    _, model, _ = build(compose_config("train", tmp_path, data_dir, [*TINY, "model.steps_per_call=4"]))
    model._trainer = SimpleNamespace(world_size=2)
    with pytest.raises(CtlError, match=r"DDP's gradient synchronisation does not allow \(world size 2\)"):
        model.setup("fit")
