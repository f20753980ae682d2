"""The run being served, loaded and checked in full before it answers anything.

:meth:`Served.load` opens both catalogs through the retrieval layer (every file checked against its
manifest, every embedding finite), checks the checkpoint against the catalogs' model fingerprint,
loads the image embedder when the checkpoint is there, and runs one search per category and one
forward pass, so a run that cannot serve fails here and not on a user's request. :class:`Holder`
swaps a newly loaded run in with one assignment: a request keeps the run it started with.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctl_lightning.errors import CtlError
from ctl_lightning.retrieval.index import IndexSettings
from ctl_lightning.retrieval.onnx_embedder import exported_embedder
from ctl_lightning.retrieval.recommend import Recommender
from ctl_lightning.serve.batching import MicroBatcher


@dataclass(frozen=True)
class ServeSettings:
    max_k: int = 100  # the largest k (and per_category) a query may ask for
    max_upload_bytes: int = 10 * 2**20  # the largest request body, image uploads included
    max_batch_queries: int = 256  # product queries in one POST /v1/batch
    batch_size: int = 16  # image queries in one forward pass at most
    batch_wait_ms: float = 5.0  # how long the first image of a batch waits for others
    index: IndexSettings = field(default_factory=IndexSettings)  # the index kind (exact by default) and its settings
    data_root: str | None = None  # where the run's dataset is now, if it moved


class Served:
    """A run's recommender, its image embedder and the embedder's batcher (``None`` without a model).

    The embedder is the run's ONNX export (onnxruntime) when there is one of the catalogs' model,
    the checkpoint (torch) otherwise; ``no_model`` and ``no_onnx`` say why not.
    """

    def __init__(self, run_dir: Path, recommender: Recommender, embedder, batcher: MicroBatcher | None, no_model=None, no_onnx=None):
        self.run_dir, self.recommender, self.embedder, self.batcher = run_dir, recommender, embedder, batcher
        self.no_model, self.no_onnx = no_model, no_onnx

    @classmethod
    def load(cls, run_dir: str | Path, settings: ServeSettings, on_batch=None) -> Served:
        run_dir = Path(run_dir)
        recommender = Recommender(run_dir, index=settings.index, data_root=settings.data_root)
        recommender.check_model()
        for index in recommender.index.values():
            index.warm()
        embedder, no_onnx = exported_embedder(recommender.compatible, recommender.dir)
        try:
            embedder = embedder or recommender.embedder()
        except CtlError as error:
            return cls(run_dir, recommender, None, None, f"image queries need the model that made the catalogs: {error}")
        blank = np.full((1, embedder.image_size, embedder.image_size, 3), 255, np.uint8)
        embedder.embed_crops(blank)  # the first forward pass, before any user waits on it
        batcher = MicroBatcher(embedder.embed_crops, settings.batch_size, settings.batch_wait_ms / 1000, on_batch)
        return cls(run_dir, recommender, embedder, batcher, None, no_onnx)

    @property
    def fingerprint(self) -> str:
        return str(self.recommender.similar.manifest["model"]["state_fingerprint"])

    @property
    def catalog(self) -> str:
        return str(self.recommender.dir.resolve())

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


class ReloadInProgress(CtlError):
    """Another reload holds the lock: this one is refused, not queued."""


class Holder:
    """The run served now; :meth:`replace` swaps in another, one reload at a time."""

    def __init__(self, served: Served):
        self.current = served
        self.reloading = threading.Lock()

    def replace(self, served: Served) -> Served:
        old, self.current = self.current, served
        old.close()  # queued images are still embedded by the old model; late ones embed themselves
        return old
