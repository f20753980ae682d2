"""Embedding a user's own image with the model that made a catalog.

The catalog's manifest names the checkpoint and the run configuration; the checkpoint's weights are
checked against the catalog's model fingerprint, so a query is never embedded by a different model
than the catalog it is compared with. The image goes through the same crop-pad-resize as the store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image, UnidentifiedImageError
from torch import nn

from ctl_lightning.data.store import crop_square, to_rgb
from ctl_lightning.errors import CtlError
from ctl_lightning.retrieval.catalog import Catalog, state_fingerprint


def open_image(path: str | Path) -> Image.Image:
    """An RGB image, or a one-line error naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise CtlError(f"image {path} not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise CtlError(f"cannot read image {path}: {error}") from None


class ImageEmbedder:
    def __init__(self, module, image_size: int):
        self.module = module.eval()
        self.image_size = image_size

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> "ImageEmbedder":
        manifest = catalog.manifest
        checkpoint, config = manifest["model"].get("checkpoint"), manifest["config"].get("path")
        if not checkpoint or not Path(checkpoint).is_file():
            raise CtlError(f"{catalog.path}: the checkpoint that made this catalog ({checkpoint}) is not available")
        if not config or not Path(config).is_file():
            raise CtlError(f"{catalog.path}: the run configuration ({config}) is not available")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        if state_fingerprint(state) != manifest["model"]["state_fingerprint"]:
            raise CtlError(f"{catalog.path}: its fingerprint does not match the model in {checkpoint}; rebuild the catalog with eval.py")
        model_cfg = OmegaConf.load(config).model
        module = instantiate(model_cfg, pretrained=False, weights=None, loss=nn.Identity(), optimizer=None)
        module.load_state_dict({k: v for k, v in state.items() if not k.startswith("loss.")})
        return cls(module, int(manifest["data"]["image_size"]))

    @torch.no_grad()
    def embed(self, image: Image.Image, box=None) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalized ``(similar, compatible)`` embeddings of one image (optionally a box of it)."""
        pixels = torch.from_numpy(crop_square(image, box, self.image_size))[None]
        features = self.module.backbone_features(pixels)
        compatible = self.module.head(features)
        return F.normalize(features, dim=1)[0].numpy(), F.normalize(compatible, dim=1)[0].numpy()
