"""The LightningModule's contract with its backbone: input size, normalization, frozen parts."""

from __future__ import annotations

import pytest
import torch

from ctl_lightning.data.datamodules import TripletsDataModule
from ctl_lightning.data.sources import SyntheticCtl
from ctl_lightning.errors import CtlError
from ctl_lightning.losses import TripletLoss
from ctl_lightning.models.module import CompatibilityModule


def _module(**kwargs) -> CompatibilityModule:
    return CompatibilityModule(loss=TripletLoss(), optimizer=torch.optim.Adam, pretrained=False, **kwargs)


def test_mean_std_and_input_size_come_from_the_backbones_data_config():
    lite = _module()  # tf_efficientnet_lite0: mean = std = 0.5, 224 px
    assert lite.input_size == 224
    pixels = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 4, 4, 3)
    x = lite.preprocess(pixels)
    assert x.shape == (2, 3, 4, 4) and torch.allclose(x[0], torch.tensor(-1.0)) and torch.allclose(x[1], torch.tensor(1.0))
    resnet = _module(backbone="resnet18")  # ImageNet mean/std
    x = resnet.preprocess(torch.full((1, 2, 2, 3), 128, dtype=torch.uint8))
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[0, :, 0, 0], expected, atol=1e-5)
    assert _module(input_size=96).input_size == 96


def test_head_shape_and_frozen_backbone():
    module = _module(hidden_dim=64, embedding_dim=32, dropout=0.1)
    head = [type(m).__name__ for m in module.head]
    assert head == ["Linear", "BatchNorm1d", "Dropout", "Linear"] and module.head[-1].out_features == 32
    assert not any(p.requires_grad for p in module.backbone.parameters())
    module.train()
    assert not module.backbone.training and module.head.training  # frozen BatchNorm statistics stay put
    trainable = _module(freeze_backbone=False)
    assert all(p.requires_grad for p in trainable.backbone.parameters())


def test_unset_image_size_needs_a_model_to_ask(tmp_path):
    datamodule = TripletsDataModule(SyntheticCtl(tmp_path), image_size=None)
    with pytest.raises(CtlError, match=r"data.image_size is null"):
        _ = datamodule.resolved_image_size
    with pytest.raises(CtlError, match="feature_cache"):
        _module(feature_cache="sometimes")


@pytest.mark.parametrize("backbone, stages, first_tail", [("tf_efficientnet_lite0", 1, "blocks.6"), ("resnet18", 2, "layer3")])
def test_the_last_stages_train_on_the_frozen_trunks_output(backbone, stages, first_tail):
    module = _module(backbone=backbone, trainable_stages=stages, input_size=64)
    assert module.tail[0] == first_tail and module.trunk[-1] != first_tail
    trainable = {
        n.split(".")[0] + "." + n.split(".")[1] if n.startswith("blocks") else n.split(".")[0]
        for n, p in module.backbone.named_parameters()
        if p.requires_grad
    }
    assert first_tail in trainable and not trainable & set(module.trunk)
    module.train()
    assert module.backbone.get_submodule(first_tail).training and not module.backbone.get_submodule(module.trunk[0]).training
    module.eval()
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    x = module.preprocess(images)
    # The cached trunk output run through the tail gives the backbone's own features.
    assert torch.allclose(module.trainable_features(module.frozen_features(x)), module.backbone(x), atol=1e-5)


def test_trainable_stages_are_checked():
    with pytest.raises(CtlError, match="the backbone has 7 stages"):
        _module(trainable_stages=8)
    with pytest.raises(CtlError, match=r"needs model.freeze_backbone=true"):
        _module(trainable_stages=1, freeze_backbone=False)
    with pytest.raises(CtlError, match="not its stages in order"):
        _module(backbone="vit_tiny_patch16_224", trainable_stages=1)


def test_epoch_means_are_weighted_and_keep_no_reference_to_a_value():
    """A step's value may be a CUDA graph's output that the next replay overwrites (model.cuda_graph=step):
    the sums must not alias it."""
    from ctl_lightning.models.epoch_means import EpochMeans

    means, value = EpochMeans(), torch.tensor(2.0)
    means.add("loss", value, 1)
    value.fill_(100.0)  # the next replay
    means.add("loss", value, 3)
    means.add("mined", 5.0, 1)
    assert {k: float(v) for k, v in means.pop().items()} == {"loss": (2.0 + 100.0 * 3) / 4, "mined": 5.0}
    assert means.pop() == {}
