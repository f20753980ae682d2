"""Embedding a user's own image with the model that made a catalog.

The catalog's manifest names the checkpoint (relative to the run folder), which carries its own model
config; the checkpoint's weights are checked against the catalog's model fingerprint, so a query is
never embedded by a different model than the catalog it is compared with. The image goes through the
same crop-pad-resize as the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image, UnidentifiedImageError
from torch import nn

from ctl_lightning.data.crops import crop_square, to_rgb
from ctl_lightning.errors import CtlError
from ctl_lightning.models.checkpoint import load_checkpoint, saved_run_config
from ctl_lightning.models.fingerprint import state_fingerprint
from ctl_lightning.retrieval.catalog import Catalog


class NotAnImage(CtlError):
    """Bytes that do not decode as a picture (or decode to more pixels than Pillow's bomb limit)."""


def open_image(path: str | Path | BinaryIO, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """An RGB image from a file or a binary stream, or a one-line error naming it (``name``: what to call it).

    ``max_pixels``: refuse larger images from their header, before decoding (a server's limit; Pillow
    itself refuses only twice its ``MAX_IMAGE_PIXELS`` and merely warns below that).
    """
    name = name or str(path)
    try:
        with Image.open(path) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise NotAnImage(f"image {name} has {image.width} x {image.height} pixels, over the limit of {max_pixels:,}")
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise CtlError(f"image {name} not found") from None
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        detail = str(error) if isinstance(path, str | Path) else str(error).replace(repr(path), repr(name))  # not the stream's repr
        raise NotAnImage(f"cannot read image {name}: {detail}") from None


class ImageEmbedder:
    kind = "torch"

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

    def crop(self, image: Image.Image, box=None) -> np.ndarray:
        """The ``[S, S, 3]`` uint8 crop the model sees: the store's crop-pad-resize of ``box`` (or the whole image)."""
        return crop_square(image, box, self.image_size)

    @torch.no_grad()
    def embed_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalized ``(similar [B, D1], compatible [B, D2])`` of a batch of crops in one forward pass.

        A row the model maps to NaN or inf stays non-finite: :func:`check_finite` refuses it, so one bad
        image of a batch does not fail the others.
        """
        features = self.module.backbone_features(torch.from_numpy(np.ascontiguousarray(crops)))
        compatible = self.module.head(features)
        return F.normalize(features, dim=1).numpy(), F.normalize(compatible, dim=1).numpy()

    def embed(self, image: Image.Image, box=None) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalized ``(similar, compatible)`` embeddings of one image (optionally a box of it)."""
        similar, compatible = self.embed_crops(self.crop(image, box)[None])
        return check_finite(similar[0], compatible[0])


def check_finite(similar: np.ndarray, compatible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not (np.isfinite(similar).all() and np.isfinite(compatible).all()):
        raise CtlError("the model gave a non-finite embedding (NaN or inf) for this image")
    return similar, compatible


def checked_checkpoint(catalog: Catalog, path: Path) -> dict:
    """The checkpoint at ``path``, if its weights are those that embedded ``catalog``."""
    checkpoint = load_checkpoint(path)
    if state_fingerprint(checkpoint["state_dict"]) != catalog.manifest["model"]["state_fingerprint"]:
        raise CtlError(f"{catalog.path}: its fingerprint does not match the model in {path}; rebuild the catalog with eval.py")
    return checkpoint
