"""The fast paths give the numbers of the slow ones: the frozen-backbone feature cache and the
per-batch deduplication of triplet members."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers import TINY, compose_config
from torch._dynamo import register_backend
from torch._dynamo.backends.registry import lookup_backend

from ctl_lightning.benchmarks.device_waits import DeviceWaits
from ctl_lightning.data.batches import TripletCollate
from ctl_lightning.pipeline import build


class LossRecorder(pl.Callback):
    """Every optimizer step's loss, as the module records it for the epoch's mean: one a trainer call,
    or each of the fixed-shape steps a call runs (``model.steps_per_call``)."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_start(self, trainer, pl_module):
        record = pl_module._record_training_step

        def recorded(loss, accuracy, n):
            self.losses.append(float(loss.detach()))
            record(loss, accuracy, n)

        pl_module._record_training_step = recorded


def _fit(data_dir, tmp_path, *overrides: str) -> tuple[list[float], object, object, pl.Trainer]:
    cfg = compose_config("train", tmp_path, data_dir, [*TINY, "trainer.max_epochs=2", "trainer.deterministic=true", *overrides])
    datamodule, model, trainer = build(cfg)
    recorder = LossRecorder()
    trainer.callbacks.append(recorder)
    trainer.fit(model, datamodule=datamodule)
    return recorder.losses, model, datamodule, trainer


def _training_losses(data_dir, tmp_path, *overrides: str) -> tuple[list[float], object]:
    losses, model, _, _ = _fit(data_dir, tmp_path, *overrides)
    return losses, model


@pytest.mark.parametrize("stages", [0, 1])
def test_feature_cache_trains_exactly_like_recomputing_the_backbone(data_dir, tmp_path, stages):
    """Head only (the cache holds pooled features) and last stage trained (it holds the trunk's maps).
    Six steps in each of the two epochs: a cache that served other features than the trunk computes
    would change the loss from the first step."""
    recipe = [f"model.trainable_stages={stages}", "+trainer.limit_train_batches=6", "+trainer.limit_val_batches=2"]
    cached, cached_model = _training_losses(data_dir, tmp_path / "cached", "model.feature_cache=true", *recipe)
    direct, direct_model = _training_losses(data_dir, tmp_path / "direct", "model.feature_cache=false", *recipe)
    assert cached_model.cached_features is not None and direct_model.cached_features is None
    assert cached_model.cached_features.dim() == (4 if stages else 2)
    assert len(cached) == len(direct) > 10
    np.testing.assert_allclose(cached, direct, atol=1e-5, rtol=0)
    trained = [(n, p) for n, p in cached_model.named_parameters() if p.requires_grad and not n.startswith("loss")]
    assert any(n.startswith("backbone") for n, _ in trained) == bool(stages)
    direct_parameters = dict(direct_model.named_parameters())
    for name, value in trained:
        torch.testing.assert_close(value, direct_parameters[name], atol=1e-4, rtol=0, msg=name)


def test_feature_cache_is_automatic_only_when_it_is_exact():
    from ctl_lightning.errors import CtlError
    from ctl_lightning.losses import TripletLoss
    from ctl_lightning.models.module import CompatibilityModule

    def module(**kwargs):
        return CompatibilityModule(loss=TripletLoss(), optimizer=torch.optim.Adam, pretrained=False, **kwargs)

    assert module().uses_feature_cache()
    assert not module(freeze_backbone=False).uses_feature_cache()
    assert not module(augment=True).uses_feature_cache()
    assert not module(feature_cache=False).uses_feature_cache()
    with pytest.raises(CtlError, match="feature_cache=true needs"):
        module(freeze_backbone=False, feature_cache=True).uses_feature_cache()


def test_dedup_gives_the_same_loss_and_embeds_fewer_images(data_dir, tmp_path):
    """Deduplication changes how many images are embedded, not the loss: for the same model (in eval
    mode, where an embedding depends on its image alone) every batch's loss is identical. In train
    mode BatchNorm statistics and dropout masks are drawn over the batch's rows, by design."""
    cfg = compose_config("train", tmp_path, data_dir, TINY)
    datamodule, model, _ = build(cfg)
    datamodule.setup("fit")
    model.eval()
    store, labels, categories = datamodule.store, datamodule.labels, datamodule.categories
    unique_rows = total_rows = 0
    with torch.no_grad():
        for start in range(0, len(datamodule.train_triplets), 64):
            samples = list(datamodule.train_triplets[start : start + 64])
            deduped = TripletCollate(store, labels, categories, dedup=True)(samples)
            repeated = TripletCollate(store, labels, categories, dedup=False)(samples)
            losses = [model.loss(model.head(model.backbone_features(b["images"])), b["labels"], b["triplets"]) for b in (deduped, repeated)]
            torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=0)
            unique_rows += len(deduped["row_ids"])
            total_rows += len(repeated["row_ids"])
    assert total_rows == 3 * len(datamodule.train_triplets)
    assert unique_rows < total_rows


def test_feature_cache_is_recomputed_for_another_store_or_other_frozen_weights():
    """Keyed by the store's fingerprint and the frozen weights': testing a checkpoint whose backbone
    differs, or predicting another dataset, never reuses features of the old ones."""
    from types import SimpleNamespace

    from ctl_lightning.losses import TripletLoss
    from ctl_lightning.models.feature_cache import FeatureCache
    from ctl_lightning.models.module import CompatibilityModule

    model = CompatibilityModule(loss=TripletLoss(), optimizer=torch.optim.Adam, backbone="resnet18", pretrained=False, input_size=32)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    store = SimpleNamespace(fingerprint="store-a", table=SimpleNamespace(positions=np.arange(3)), read=lambda rows: pixels[rows])
    datamodule = SimpleNamespace(store=store, pixels=store, load_images=True)
    cache = FeatureCache(datamodule)
    cache.on_fit_start(None, model)
    first = model.cached_features
    assert first is not None and first.shape == (3, model.backbone.num_features) and datamodule.load_images is False
    cache.on_test_start(None, model)
    assert model.cached_features is first  # same store, same weights: reused
    with torch.no_grad():
        model.backbone.conv1.weight.mul_(2)
    cache.on_test_start(None, model)
    assert model.cached_features is not first and not torch.allclose(model.cached_features, first)
    second = model.cached_features
    store.fingerprint = "store-b"
    cache.on_predict_start(None, model)
    assert model.cached_features is not second


def test_feature_cache_on_disk_is_shared_between_runs_and_recomputed_when_damaged(tmp_path, caplog):
    """With a directory, a second run on the same store and frozen weights loads the features the
    first one computed (it never embeds); a damaged file, or one for another store size, is computed
    again with a warning; other weights get a file of their own."""
    from types import SimpleNamespace

    from ctl_lightning.losses import TripletLoss
    from ctl_lightning.models.feature_cache import FeatureCache
    from ctl_lightning.models.module import CompatibilityModule

    class Store:
        fingerprint = "store-a"

        def __init__(self, rows: int):
            self.pixels = np.random.default_rng(0).integers(0, 256, (rows, 32, 32, 3), dtype=np.uint8)
            self.table = SimpleNamespace(positions=np.arange(rows))

        def __len__(self) -> int:
            return len(self.pixels)

        def read(self, rows):
            return self.pixels[rows]

    def run(model, rows=3):
        store = Store(rows)
        FeatureCache(SimpleNamespace(store=store, pixels=store, load_images=True), directory=tmp_path / "cache").on_fit_start(None, model)
        return model.cached_features

    def model():
        torch.manual_seed(0)
        return CompatibilityModule(loss=TripletLoss(), optimizer=torch.optim.Adam, backbone="resnet18", pretrained=False, input_size=32)

    first = run(model())
    (saved,) = (tmp_path / "cache").glob("store-a-*.npy")
    second_model = model()
    second_model.embed_store = lambda *a, **k: pytest.fail("the saved features should have been loaded")
    assert torch.equal(run(second_model), first)

    saved.write_bytes(b"not a numpy file")
    with caplog.at_level("WARNING"):
        assert torch.equal(run(model()), first)
    assert "does not load" in caplog.text and np.load(saved).shape == tuple(first.shape)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert len(run(model(), rows=4)) == 4
    assert "not float32 for 4 products" in caplog.text

    other = model()
    with torch.no_grad():
        other.backbone.conv1.weight.mul_(2)
    run(other)
    assert len(list((tmp_path / "cache").glob("store-a-*.npy"))) == 2


@pytest.mark.parametrize(
    "recipe",
    [["model=resnet18", "model.pretrained=false", "model.freeze_backbone=false"], ["model.feature_cache=true"]],
    ids=["fine-tuning", "frozen + feature cache"],
)
def test_device_store_trains_and_predicts_exactly_like_the_loader_path(data_dir, tmp_path, recipe):
    """``data.device_store=true`` on the CPU runs the GPU path (pixels gathered by row id after the
    transfer, triplets deduplicated there): the same losses step by step, and the same embeddings."""
    recipe = [*recipe, "+trainer.limit_train_batches=8", "+trainer.limit_val_batches=2"]
    resident, _, resident_data, resident_trainer = _fit(data_dir, tmp_path / "resident", "data.device_store=true", *recipe)
    loader, _, loader_data, loader_trainer = _fit(data_dir, tmp_path / "loader", "data.device_store=false", *recipe)
    assert resident_data.resident is not None and loader_data.resident is None
    assert len(resident) == len(loader) > 10
    np.testing.assert_allclose(resident, loader, atol=1e-6, rtol=0)
    embedded = [
        torch.cat([out["compatible"] for out in trainer.predict(datamodule=data, ckpt_path="last")])
        for trainer, data in ((resident_trainer, resident_data), (loader_trainer, loader_data))
    ]
    torch.testing.assert_close(embedded[0], embedded[1], atol=1e-6, rtol=0)


def test_device_deduplication_gives_the_host_collates_batch(data_dir, tmp_path):
    """With the number of distinct rows counted on the host, as the data module does, or found by
    ``torch.unique``: the loader path's batch exactly. Given the count, every size is known before the
    data (it runs on fake tensors, which have none), so a GPU never waits; ``torch.unique`` cannot."""
    from torch._subclasses.fake_tensor import DynamicOutputShapeException, FakeTensorMode

    from ctl_lightning.data.batches import category_codes
    from ctl_lightning.data.device_store import deduplicate

    datamodule, _, _ = build(compose_config("train", tmp_path, data_dir, TINY))
    datamodule.setup("fit")
    store, labels, categories = datamodule.store, datamodule.labels, datamodule.categories
    tables = torch.from_numpy(labels), torch.from_numpy(category_codes(store, categories))
    samples = datamodule.train_triplets[:64]
    distinct = len(np.unique(samples))
    assert distinct < samples.size  # a batch with repeated members
    for dedup, count in ((True, distinct), (True, None), (False, None)):
        host = TripletCollate(store, labels, categories, load_images=False, dedup=dedup)(samples)
        device = deduplicate(torch.from_numpy(samples), *tables, unique=dedup, distinct=count)
        assert host.keys() == device.keys()
        for key in host:
            torch.testing.assert_close(device[key], host[key], rtol=0, atol=0, msg=key)
    with FakeTensorMode() as fake:
        rows, fake_tables = fake.from_tensor(torch.from_numpy(samples)), [fake.from_tensor(t) for t in tables]
        assert deduplicate(rows, *fake_tables, distinct=distinct)["row_ids"].shape == (distinct,)
        with pytest.raises(DynamicOutputShapeException):
            deduplicate(rows, *fake_tables)


def test_device_store_batches_wait_for_no_device_data_after_their_transfer(data_dir, tmp_path, monkeypatch):
    """What the host must know of a device-store batch, it learns before the transfer, from the ids
    still on the host: its largest row (while the store loads, the chunk to wait for) and, for a
    training batch, its number of distinct rows (the deduplication's size). After the transfer (on a
    GPU the batch is there) no op needs the batch's data on the host, which would make each batch wait
    for the GPU to finish the one before. The pixels are still the store's."""
    from ctl_lightning.data import device_store
    from ctl_lightning.data.batches import ProductCollate, triplet_rows

    datamodule, _, _ = build(compose_config("train", tmp_path, data_dir, TINY))
    datamodule.setup("fit")
    store = datamodule.store
    monkeypatch.setattr(device_store, "COPY_BYTES", 8 * store.size**2 * 3)  # 8 rows a chunk
    datamodule.resident = device_store.ResidentPixels.load(store, torch.device("cpu"), share=1.0)
    predict = ProductCollate(store, load_images=False)(list(datamodule.predict_rows[:32]))
    training = triplet_rows(list(datamodule.train_triplets[:16]))
    for batch in (predict, training):
        assert datamodule.resident._loading is not None  # the load's waits are on the path
        batch = datamodule.on_before_batch_transfer(batch, 0)
        with DeviceWaits() as waits:
            batch = datamodule.on_after_batch_transfer(batch, 0)
        assert waits.ops == []
        np.testing.assert_array_equal(batch["images"].numpy(), store.read(batch["row_ids"].numpy()))


GRAPH_INPUTS: list[tuple[int, ...]] = []  # the shapes of every input of the graphs recording_aot_eager compiled


@register_backend
def recording_aot_eager(graph, example_inputs):
    """aot_eager that records its graphs' input shapes (``model.compile_backend=recording_aot_eager``)."""
    GRAPH_INPUTS.extend(tuple(int(n) for n in x.shape) for x in example_inputs if isinstance(x, torch.Tensor))
    return lookup_backend("aot_eager")(graph, example_inputs)


@pytest.mark.parametrize(
    "recipe, loss_in_graph",
    [
        (["model=resnet18", "model.pretrained=false", "model.freeze_backbone=false"], True),
        (["model.trainable_stages=1", "model.feature_cache=true"], True),
        (["model.trainable_stages=1", "model.feature_cache=true", "data.batching=outfits", "loss.miner=batch_hard"], False),
    ],
    ids=["fine-tuning", "last stage over the feature cache", "with a miner, the embedding only"],
)
def test_compiled_training_step_trains_exactly_like_the_eager_one(data_dir, tmp_path, recipe, loss_in_graph):
    """``model.compile`` traces the training step's model work (the whole backbone, or the last stage over
    the cached trunk's maps, then the head, the loss and the triplet accuracy) into one graph for any
    row count; with a miner, whose mined triplets' count depends on the data, the embedding only (a
    graph holding the loss broke at the miner and compiled again at every step: 30 graphs in 5 steps).
    The aot_eager backend runs that traced graph, forward and backward, with eager kernels: the same losses step by step, weights
    and BatchNorm statistics show that the capture changes nothing (batch statistics, running buffers,
    the row count of each deduplicated batch, dropout's draws). The cache itself is no input of the
    graph, only the batch's rows of it. Inductor's kernels round differently, and in the fine-tuning
    recipe any such change grows by one to two orders of magnitude a step (as turning oneDNN off does:
    experiments/benchmarks/compile_rounding.py), so an inductor run cannot be compared step by step:
    bench/gpu.sh measures its speed."""
    from torch._dynamo.utils import counters

    recipe = [*recipe, "data.device_store=true", "+trainer.limit_train_batches=6", "+trainer.limit_val_batches=2"]
    torch._dynamo.reset()
    counters.clear()
    GRAPH_INPUTS.clear()
    compile_ = ["model.compile=default", "model.compile_backend=recording_aot_eager"]
    compiled, compiled_model, _, _ = _fit(data_dir, tmp_path / "compiled", *compile_, *recipe)
    graphs, breaks = counters["stats"]["unique_graphs"], dict(counters["graph_break"])
    eager, eager_model, _, _ = _fit(data_dir, tmp_path / "eager", *recipe)
    assert graphs == 1 and breaks == {}  # every step ran the one captured graph, whole
    cache = compiled_model.cached_features
    assert (cache is not None) == ("model.feature_cache=true" in recipe)
    assert cache is None or tuple(cache.shape) not in GRAPH_INPUTS
    # The batch's triplets ([n, 3] positions) enter the graph with the loss.
    assert any(len(shape) == 2 and shape[1] == 3 for shape in GRAPH_INPUTS) == loss_in_graph
    assert len(compiled) == len(eager) == 12
    np.testing.assert_allclose(compiled, eager, atol=1e-6, rtol=0)
    eager_state = eager_model.state_dict()
    for name, value in compiled_model.state_dict().items():
        torch.testing.assert_close(value, eager_state[name], atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"compile": "fast"}, "model.compile must be null or one of default, reduce-overhead"),
        ({"compile": "default", "compile_backend": "tvm-ish"}, "model.compile_backend='tvm-ish' is not a torch.compile backend"),
        ({"compile": "reduce-overhead", "compile_backend": "aot_eager"}, "takes model.compile=default"),
        ({"compile": "default", "steps_per_call": 4}, "set one of them to null"),
    ],
)
def test_compile_settings_that_cannot_run_are_one_line_errors(settings, message):
    from ctl_lightning.errors import CtlError
    from ctl_lightning.losses import TripletLoss
    from ctl_lightning.models.module import CompatibilityModule

    with pytest.raises(CtlError, match=message):
        CompatibilityModule(loss=TripletLoss(), optimizer=torch.optim.Adam, backbone="resnet18", pretrained=False, **settings)


def test_fused_adam_trains_like_the_default_update(data_dir, tmp_path):
    """``optimizer.fused=true`` (Adam's update in one kernel: on a GPU it cuts the step's host time,
    experiments/benchmarks/GPU.md) is the same optimisation: the head-only recipe over the feature
    cache gives the default update's losses step by step and its weights, up to the last bits' rounding."""
    recipe = ["model.trainable_stages=0", "model.feature_cache=true", "+trainer.limit_train_batches=6", "+trainer.limit_val_batches=2"]
    fused, fused_model = _training_losses(data_dir, tmp_path / "fused", "optimizer.fused=true", *recipe)
    default, default_model = _training_losses(data_dir, tmp_path / "default", *recipe)
    assert fused_model.optimizers().optimizer.defaults["fused"] is True
    assert default_model.optimizers().optimizer.defaults["fused"] is None
    assert len(fused) == len(default) == 12
    np.testing.assert_allclose(fused, default, atol=1e-5, rtol=0)
    # The first Linear's bias, and the running mean it shifts, are left out: BatchNorm subtracts that
    # bias again, so its gradient is rounding noise, which Adam turns into full steps under either
    # update (as in tests/test_member_steps.py).
    default_state = default_model.head.state_dict()
    for name, value in fused_model.head.state_dict().items():
        if name not in ("0.bias", "1.running_mean"):
            torch.testing.assert_close(value, default_state[name], atol=1e-4, rtol=0, msg=name)
