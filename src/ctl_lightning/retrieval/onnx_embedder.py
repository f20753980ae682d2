"""The image embedder exported to ONNX, and run by onnxruntime.

``ctl-export onnx RUN_DIR`` writes ``RUN_DIR/export/``: ``embedder.onnx`` (the backbone and the head
of the checkpoint that made the run's catalogs) and ``embedder.json`` (what it takes and gives, and
the fingerprint of the weights). The graph holds the preprocessing too, so its input is what the
product store holds:

* input ``crops``: uint8 ``[batch, S, S, 3]``, RGB, height x width x channel, ``S`` the catalog's
  ``data.image_size``. A product is cropped to its normalized ``x, y, w, h`` box, padded to a square
  with white and resized bilinearly to ``S`` (:func:`ctl_lightning.data.store.crop_square`).
  Inside the graph: to float, scaled by the backbone's mean and std (``(pixel / 255 - mean) / std``).
* outputs ``similar`` ``[batch, D1]`` (backbone features) and ``compatible`` ``[batch, D2]`` (head
  outputs), each L2-normalized: the rows of the ``similar`` and ``compatible`` catalogs.

:class:`OnnxEmbedder` has :class:`~ctl_lightning.retrieval.embedder.ImageEmbedder`'s interface;
:func:`exported_embedder` loads it when the export is there and its fingerprint is the catalog's.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctl_lightning.data.store import crop_square
from ctl_lightning.errors import CtlError
from ctl_lightning.io import building, read_json_object, replace_dir, write_json
from ctl_lightning.retrieval.catalog import Catalog

log = logging.getLogger(__name__)

EXPORT_DIR = "export"
MODEL_FILE = "embedder.onnx"
META_FILE = "embedder.json"
OPSET = 17
META_FIELDS = {"format": str, "state_fingerprint": str, "image_size": int, "outputs.similar": int, "outputs.compatible": int}


class _Graph(nn.Module):
    """uint8 crops -> the two L2-normalized embeddings, as ImageEmbedder.embed_crops computes them."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.module.backbone_features(crops)
        return F.normalize(features, dim=1), F.normalize(self.module.head(features), dim=1)


def export_folder(catalogs: Path) -> Path:
    """``RUN_DIR/export``, beside the run's ``catalogs`` folder."""
    return catalogs.parent / EXPORT_DIR


def export_graph(module: nn.Module, image_size: int, folder: Path, fingerprint: str, backbone: str | None = None) -> dict:
    """Write ``folder/embedder.onnx`` and ``folder/embedder.json`` for ``module``'s backbone and head; the meta."""
    graph = _Graph(module).eval()
    example = torch.full((2, image_size, image_size, 3), 255, dtype=torch.uint8)
    with torch.no_grad():
        similar, compatible = graph(example)
    with warnings.catch_warnings():
        # The TorchScript exporter: seconds where torch.export's takes a minute, for the same graph.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph,
            (example,),
            str(folder / MODEL_FILE),
            input_names=["crops"],
            output_names=["similar", "compatible"],
            dynamic_axes={"crops": {0: "batch"}, "similar": {0: "batch"}, "compatible": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    meta = {
        "format": "ctl-onnx-embedder",
        "state_fingerprint": fingerprint,
        "backbone": backbone,
        "image_size": image_size,
        "opset": OPSET,
        "input": {
            "name": "crops",
            "dtype": "uint8",
            "shape": ["batch", image_size, image_size, 3],
            "layout": "RGB, height x width x channel",
        },
        "outputs": {"similar": int(similar.shape[1]), "compatible": int(compatible.shape[1])},
        "preprocessing": "crop the normalized x,y,w,h box, pad to a square with white, resize bilinearly to image_size "
        "(ctl_lightning.data.store.crop_square); the graph scales the pixels by the backbone's mean and std",
        "normalized": "both outputs are L2-normalized",
    }
    write_json(folder / META_FILE, meta)
    return meta


def export_onnx(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/export/`` for the model of the run's catalogs (checked against their fingerprint)."""
    from ctl_lightning.retrieval.recommend import Recommender

    recommender = Recommender(run_dir)
    torch_embedder = recommender.embedder()
    model = recommender.compatible.manifest["model"]
    final = export_folder(recommender.dir)
    with building(final) as tmp:
        export_graph(torch_embedder.module, torch_embedder.image_size, tmp, model["state_fingerprint"], model.get("backbone"))
        replace_dir(tmp, final)
    return final


class OnnxEmbedder:
    """An exported embedder run by onnxruntime, with the interface of :class:`ImageEmbedder`."""

    kind = "onnxruntime"

    def __init__(self, folder: Path, meta: dict, threads: int | None = None):
        """``threads``: onnxruntime's intra-op threads (default: one per physical core)."""
        import onnxruntime

        self.folder, self.meta = folder, meta
        self.image_size = int(meta["image_size"])
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise CtlError(
                f"{folder / MODEL_FILE}: not a loadable ONNX model ({str(error).splitlines()[0][:200]}); export it again"
            ) from None

    def crop(self, image, box=None) -> np.ndarray:
        return crop_square(image, box, self.image_size)

    def embed_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        similar, compatible = self.session.run(None, {"crops": np.ascontiguousarray(crops, dtype=np.uint8)})
        return similar, compatible


def exported_embedder(catalog: Catalog, catalogs: Path) -> tuple[OnnxEmbedder | None, str | None]:
    """The run's ONNX embedder when ``RUN_DIR/export/`` holds one of ``catalog``'s model, and why not otherwise."""
    folder = export_folder(catalogs)
    if not (folder / META_FILE).is_file():
        return None, f"no ONNX export in {folder} (ctl-export onnx writes one)"
    meta = read_json_object(folder / META_FILE, META_FIELDS)
    if meta["state_fingerprint"] != catalog.manifest["model"]["state_fingerprint"]:
        return None, f"{folder}: the ONNX export is of other weights than the catalogs' model; export it again"
    if meta["image_size"] != int(catalog.manifest["data"]["image_size"]):
        return (
            None,
            f"{folder}: the ONNX export takes {meta['image_size']} px crops, the catalogs {catalog.manifest['data']['image_size']} px",
        )
    return OnnxEmbedder(folder, meta), None
