"""Backbones: offline ImageNet weights for the default model, and honest failures otherwise."""

from __future__ import annotations

import time

import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from timm.data import ImageNetInfo

from ctl_lightning.errors import PretrainedWeightsError
from ctl_lightning.models.backbones import create_backbone, map_state_dict_in_order


def _classify(model: torch.nn.Module, image_name: str) -> tuple[str, float]:
    config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**config)
    with torch.no_grad():
        probs = model.eval()(transform(Image.fromarray(load_sample_image(image_name)))[None]).softmax(-1)[0]
    return ImageNetInfo().index_to_description(int(probs.argmax())), float(probs.max())


def test_packaged_efficientnet_lite0_weights_classify_sklearn_samples():
    model = create_backbone("tf_efficientnet_lite0", pretrained=True, num_classes=1000)
    label, p = _classify(model, "flower.jpg")
    assert label == "daisy" and p > 0.2
    assert _classify(model, "china.jpg")[0] == "palace"


def test_random_init_does_not_recognise_the_daisy():
    torch.manual_seed(0)
    model = create_backbone("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    label, p = _classify(model, "flower.jpg")
    assert label != "daisy" and p < 0.2  # the pretrained model is at 0.32 on the right class


def test_feature_backbone_has_no_classifier_and_matches_the_packaged_features():
    features = create_backbone("tf_efficientnet_lite0", pretrained=True)
    full = create_backbone("tf_efficientnet_lite0", pretrained=True, num_classes=1000)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(features.eval()(x), full.eval().forward_head(full.forward_features(x), pre_logits=True), atol=1e-5)
    assert features.num_features == 1280


def test_unreachable_hub_is_a_clear_error_not_a_random_init():
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError) as error:
        create_backbone("resnet18", pretrained=True)
    message = str(error.value)
    assert "resnet18" in message and "model.pretrained=false" in message and "model.weights=PATH" in message
    assert time.monotonic() - start < 30, "the offline failure must not wait for a minute of retries"


def test_local_weights_file_is_loaded_through_timm(tmp_path):
    source = timm.create_model("resnet18", pretrained=False)
    torch.nn.init.constant_(source.conv1.weight, 0.125)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = create_backbone("resnet18", pretrained=True, weights=str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.num_features == 512 and not hasattr(model.fc, "weight")


def test_missing_weights_file_and_unknown_backbone_are_clear_errors(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="not found"):
        create_backbone("resnet18", pretrained=True, weights=str(tmp_path / "nope.pth"))
    with pytest.raises(PretrainedWeightsError, match="unknown timm backbone 'resnet_nope'"):
        create_backbone("resnet_nope", pretrained=False)


def test_in_order_mapping_checks_every_shape():
    target = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    good = {"a.w": torch.ones(4, 3), "a.b": torch.ones(4), "b.w": torch.ones(2, 4), "b.b": torch.ones(2)}
    mapped = map_state_dict_in_order(good, target, "good.pth")
    assert list(mapped) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    bad = dict(good, **{"b.w": torch.ones(3, 4)})
    with pytest.raises(PretrainedWeightsError, match=r"b\.w \(3, 4\) does not fit 1\.weight \(2, 4\)"):
        map_state_dict_in_order(bad, target, "bad.pth")
