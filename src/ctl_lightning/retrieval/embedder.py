"""Embedding a user's own image with the model that made a catalog.

The catalog's manifest names the checkpoint (relative to the run folder), which carries its own model
config; the checkpoint's weights are checked against the catalog's model fingerprint, so a query is
never embedded by a different model than the catalog it is compared with. The image goes through the
same crop-pad-resize as the store.
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

from ctl_lightning.data.crops import crop_square, to_rgb
from ctl_lightning.errors import CtlError
from ctl_lightning.models.checkpoint import load_checkpoint, saved_run_config, state_fingerprint
from ctl_lightning.retrieval.catalog import Catalog


def open_image(path: str | Path) -> Image.Image:
    """An RGB image, or a one-line error naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise CtlError(f"image {path} not found") from None
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise CtlError(f"cannot read image {path}: {error}") from None


class ImageEmbedder:
    def __init__(self, module, image_size: int):
        self.module = module.eval()
        self.image_size = image_size

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> ImageEmbedder:
        path = catalog.resolve(catalog.manifest["model"].get("checkpoint"))
        if path is None or not path.is_file():
            raise CtlError(f"{catalog.path}: the checkpoint that made this catalog ({path}) is not available")
        checkpoint = checked_checkpoint(catalog, path)
        config = saved_run_config(checkpoint, path)
        if config is None:
            config_path = catalog.resolve(catalog.manifest["config"].get("path"))
            if config_path is None or not config_path.is_file():
                raise CtlError(f"{path} carries no model config and the run configuration ({config_path}) is not available")
            config = OmegaConf.load(config_path)
        module = instantiate(config.model, pretrained=False, weights=None, loss=nn.Identity(), optimizer=None)
        module.load_state_dict({k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("loss.")})
        return cls(module, int(catalog.manifest["data"]["image_size"]))

    @torch.no_grad()
    def embed(self, image: Image.Image, box=None) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalized ``(similar, compatible)`` embeddings of one image (optionally a box of it)."""
        pixels = torch.from_numpy(crop_square(image, box, self.image_size))[None]
        features = self.module.backbone_features(pixels)
        compatible = self.module.head(features)
        if not bool(torch.isfinite(features).all() and torch.isfinite(compatible).all()):
            raise CtlError("the model gave a non-finite embedding (NaN or inf) for this image")
        return F.normalize(features, dim=1)[0].numpy(), F.normalize(compatible, dim=1)[0].numpy()


def checked_checkpoint(catalog: Catalog, path: Path) -> dict:
    """The checkpoint at ``path``, if its weights are those that embedded ``catalog``."""
    checkpoint = load_checkpoint(path)
    if state_fingerprint(checkpoint["state_dict"]) != catalog.manifest["model"]["state_fingerprint"]:
        raise CtlError(f"{catalog.path}: its fingerprint does not match the model in {path}; rebuild the catalog with eval.py")
    return checkpoint
