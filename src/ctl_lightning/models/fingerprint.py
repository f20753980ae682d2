"""The fingerprint of a model's weights, apart from checkpoints so that what uses it (the feature
cache, the catalog writer) imports neither Hydra nor OmegaConf: the GPU benchmark runs on hosts that
have torch and Lightning only."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import torch


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """Hash of a state dict: ties a catalog, or the feature cache, to the exact weights that embedded it."""
    return host_fingerprint(host_state(state))


def host_state(state: Mapping[str, torch.Tensor]) -> list[tuple[str, np.ndarray]]:
    """What :func:`state_fingerprint` hashes, in host memory (a copy of tensors on a GPU, a view of
    those on the CPU), so that a thread can hash it while the device goes on: the catalog writer takes
    it before predict's first batch (hashing ResNet18's weights took 40 ms at publish)."""
    return [(name, tensor.detach().cpu().contiguous().numpy()) for name, tensor in sorted(state.items())]


def host_fingerprint(state: list[tuple[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for name, array in state:
        digest.update(name.encode())
        digest.update(array.reshape(-1).view(np.uint8).data)  # hashlib releases the GIL for large buffers
    return digest.hexdigest()[:20]
