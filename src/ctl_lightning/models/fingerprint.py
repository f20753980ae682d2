"""The fingerprint of a model's weights, apart from checkpoints so that what uses it (the feature
cache, the catalog writer) imports neither Hydra nor OmegaConf: the GPU benchmark runs on hosts that
have torch and Lightning only."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """Hash of a state dict: ties a catalog, or the feature cache, to the exact weights that embedded it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]
