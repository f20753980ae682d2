"""The compatibility model: a timm backbone plus the embedding head, trained with a metric loss.

The module does model work only: it embeds batches, computes losses and batch accuracies, and
returns embeddings from ``test_step`` and ``predict_step``. It never reads the datamodule. What
needs both the model and the data is a callback the pipeline hands the datamodule to: the feature
cache (:mod:`ctl_lightning.models.feature_cache`), the held-out metrics and baseline
(:mod:`ctl_lightning.evaluation.callback`) and the catalog writer (:mod:`ctl_lightning.retrieval.writer`).

Beyond the paper's recipe this module:

* embeds each distinct product of a batch once (the DataModule deduplicates triplet members);
* with a frozen backbone and no augmentation, trains on backbone features it is given once
  (``cached_features``, filled by the feature cache); the seed recomputed them for every image of
  every epoch;
* can let the frozen backbone's last stages learn (``trainable_stages``): the cache then holds the
  frozen trunk's output, and those stages train on it;
* can run several head-only steps over cached features in one trainer call, at a fixed shape that a
  GPU can replay from a CUDA graph (``steps_per_call``, ``cuda_graph``;
  :mod:`ctl_lightning.models.member_steps`);
* can compile the training step's embedding with ``torch.compile`` (``compile``): on a GPU the
  fine-tuning step is bound by its kernel launches, which fusion and CUDA graphs cut;
* saves the global random state in checkpoints, so a resumed run continues exactly like an
  uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial

import numpy as np
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ctl_lightning.errors import CtlError
from ctl_lightning.evaluation.metrics import triplet_wins
from ctl_lightning.models.backbones import check_split, create_backbone, run_modules, split_after_stages
from ctl_lightning.models.epoch_means import EpochMeans
from ctl_lightning.models.heads import EmbeddingHead
from ctl_lightning.models.member_steps import CUDA_GRAPH_CHOICES, MemberSteps, check_recipe
from ctl_lightning.models.subspaces import CategorySubspaces

FEATURE_CACHE_CHOICES = ("auto", True, False)
# torch.compile's modes (model.compile); null: the training step runs eagerly.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile(mode: str, backend: str, steps_per_call: int | None) -> None:
    """One-line errors for model.compile settings torch.compile cannot run."""
    if mode not in COMPILE_MODES:
        raise CtlError(f"model.compile must be null or one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    backends = torch.compiler.list_backends(exclude_tags=())
    if backend not in backends:
        raise CtlError(f"model.compile_backend={backend!r} is not a torch.compile backend: {', '.join(backends)}")
    if mode != "default" and backend != "inductor":
        raise CtlError(
            f"model.compile={mode} is a mode of the inductor backend; model.compile_backend={backend} takes model.compile=default"
        )
    if steps_per_call is not None:
        raise CtlError("model.compile and model.steps_per_call are two ways to speed up the step: set one of them to null")


def normalization(mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``scale, bias`` with ``x * scale + bias == (x / 255 - mean) / std``."""
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def normalize_images(images: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` in one fused pass after the conversion.

    The permuted view of HWC pixels already has the channels-last layout convolutions prefer, and
    ``float()`` and ``addcmul`` keep it: no extra copy.
    """
    return torch.addcmul(bias, images.permute(0, 3, 1, 2).float(), scale)


class CompatibilityModule(pl.LightningModule):
    def __init__(
        self,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        backbone: str = "tf_efficientnet_lite0",
        pretrained: bool = True,
        weights: str | None = None,
        freeze_backbone: bool = True,
        trainable_stages: int = 0,
        hidden_dim: int = 256,
        embedding_dim: int = 128,
        dropout: float = 0.4,
        feature_cache: str | bool = "auto",
        augment: bool = False,
        input_size: int | None = None,
        embed_batch_size: int = 256,
        steps_per_call: int | None = None,
        cuda_graph: bool | str = False,
        compile: str | None = None,
        compile_backend: str = "inductor",
    ):
        super().__init__()
        if feature_cache not in FEATURE_CACHE_CHOICES:
            raise CtlError(f"model.feature_cache must be auto, true or false, got {feature_cache!r}")
        if compile is not None:
            check_compile(compile, compile_backend, steps_per_call)
        self.backbone_name = backbone
        self.backbone = create_backbone(backbone, pretrained=pretrained, weights=weights)
        data_config = timm.data.resolve_model_data_config(self.backbone)
        self.input_size = int(input_size or data_config["input_size"][-1])
        scale, bias = normalization(data_config["mean"], data_config["std"])
        self.register_buffer("input_scale", scale, persistent=False)
        self.register_buffer("input_bias", bias, persistent=False)
        self.head = EmbeddingHead(self.backbone.num_features, hidden_dim, embedding_dim, dropout)
        self.loss = loss
        self.optimizer_factory = optimizer
        self.freeze_backbone = freeze_backbone
        self.augment = augment
        self.feature_cache = feature_cache
        self.embed_batch_size = embed_batch_size
        if trainable_stages and not freeze_backbone:
            raise CtlError("model.trainable_stages needs model.freeze_backbone=true (false already trains every stage)")
        # With trainable_stages, the backbone runs as a frozen trunk then a trainable tail (module names).
        self.trunk: list[str] = []
        self.tail: list[str] = []
        if trainable_stages:
            self.trunk, self.tail = split_after_stages(self.backbone, trainable_stages)
            check_split(self.backbone, self.trunk, self.tail, self.input_size, backbone)
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        for name in self.tail:
            self.backbone.get_submodule(name).requires_grad_(True)
        # What the frozen part of the backbone gives for every store row (see frozen_features), set
        # by the feature cache; None: every batch carries its images.
        self.cached_features: torch.Tensor | None = None
        self.train_means = EpochMeans()  # training-step values, logged once an epoch
        # null: one deduplicated batch a trainer call (automatic optimisation); a number: that many
        # fixed-shape steps a call (models/member_steps.py), the data module grouping their batches.
        self.steps_per_call = steps_per_call
        self.member_steps: MemberSteps | None = None
        if cuda_graph not in CUDA_GRAPH_CHOICES:
            raise CtlError(f"model.cuda_graph must be false, true or step, got {cuda_graph!r}")
        if cuda_graph and steps_per_call is None:
            raise CtlError(f"model.cuda_graph={str(cuda_graph).lower()} needs model.steps_per_call (a number of steps, e.g. 16)")
        if steps_per_call is not None:
            check_recipe(self)
            self.member_steps = MemberSteps(self.head, self.loss, cuda_graph)
            self.automatic_optimization = False
        # The training step's model work (score, or with a miner its embedding): compiled by
        # setup("fit") when model.compile names a mode; validation, test and predict stay eager.
        self.compile_mode, self.compile_backend = compile, compile_backend
        self.compiled_score: Callable | None = None

    def setup(self, stage: str) -> None:
        if self.steps_per_call is not None and stage == "fit" and self.trainer.world_size > 1:
            raise CtlError(
                f"model.steps_per_call runs several backward passes in one trainer call, which DDP's gradient "
                f"synchronisation does not allow (world size {self.trainer.world_size}); set model.steps_per_call=null"
            )
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if self.member_steps is not None and self.member_steps.cuda_graph == "step" and stage == "fit" and scaler is not None:
            raise CtlError(
                f"model.cuda_graph=step records Adam's update without the gradient scaler trainer.precision="
                f"{self.trainer.precision} needs: use bf16-mixed or 32-true, or model.cuda_graph=true"
            )
        if self.trainer.strategy.root_device.type == "cuda":
            # The layout normalize_images gives: convolutions then run without a transpose each
            # (cuDNN's NHWC kernels for bf16). The CPU path stays as it is.
            self.backbone.to(memory_format=torch.channels_last)
        if self.compile_mode is not None and stage == "fit":
            # Fusion cuts the step's kernel launches, and the CUDA-graph modes replay them. The row count
            # is traced as a variable (_triplet_step marks it), so one compiled graph serves every batch;
            # a CUDA graph, of fixed shape, is still recorded for each row count met.
            # With a miner the mined triplets' count depends on the data: a graph holding the loss would
            # break there and compile again at every step, so only the embedding is compiled.
            compile_ = partial(torch.compile, mode=self.compile_mode, backend=self.compile_backend)
            self.compiled_score = compile_(self.score) if self.loss.miner is None else partial(self.score, embed=compile_(self.embed_input))

    # ----------------------------------------------------------------------------------- embedding
    def train(self, mode: bool = True) -> CompatibilityModule:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics
        for name in self.tail:
            self.backbone.get_submodule(name).train(mode)
        return self

    def uses_feature_cache(self) -> bool:
        """Whether training on cached frozen features is exact: a frozen backbone and no augmentation."""
        eligible = self.freeze_backbone and not self.augment
        if self.feature_cache is True and not eligible:
            raise CtlError("model.feature_cache=true needs model.freeze_backbone=true and model.augment=false")
        return eligible if self.feature_cache == "auto" else bool(self.feature_cache)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` -> normalized float ``[B, 3, H, W]`` with the backbone's mean and std."""
        x = normalize_images(images.to(self.device, non_blocking=True), self.input_scale, self.input_bias)
        if self.augment and self.training:
            flip = torch.rand(len(x), device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """What the frozen part of the backbone gives: pooled features, or the trunk's feature maps
        when the last stages train. This is what the feature cache holds."""
        return run_modules(self.backbone, self.trunk, x) if self.tail else self.backbone(x)

    def trainable_features(self, frozen: torch.Tensor) -> torch.Tensor:
        return run_modules(self.backbone, self.tail, frozen) if self.tail else frozen

    def backbone_forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.freeze_backbone:
            return self.backbone(x)
        with torch.no_grad():
            frozen = self.frozen_features(x)
        return self.trainable_features(frozen)

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone_forward(self.preprocess(images))

    def step_input(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the batch's features are computed from: its rows of the feature cache, or its images."""
        if self.cached_features is not None:
            return self.cached_features[batch["row_ids"].to(self.cached_features.device)].to(self.device)
        return batch["images"]

    def features_of(self, x: torch.Tensor, from_cache: bool) -> torch.Tensor:
        return self.trainable_features(x) if from_cache else self.backbone_features(x)

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.features_of(self.step_input(batch), self.cached_features is not None)

    @torch.no_grad()
    def embed_store(self, pixels, rows: np.ndarray, description: str, frozen_only: bool = False) -> torch.Tensor:
        """Backbone features of ``rows`` in eval mode, in chunks, with a progress bar; ``pixels`` reads
        crops by row id (the product store, or its copy on the device: ``datamodule.pixels``);
        ``frozen_only``: what the feature cache holds (see :meth:`frozen_features`)."""
        was_training = self.training
        self.eval()
        chunks = []
        for start in tqdm(range(0, len(rows), self.embed_batch_size), desc=description, unit="batch", leave=False):
            part = rows[start : start + self.embed_batch_size]  # read returns them in this order
            x = self.preprocess(torch.as_tensor(pixels.read(part)))
            chunks.append((self.frozen_features(x) if frozen_only else self.backbone_forward(x)).float())
        self.train(was_training)
        return torch.cat(chunks)

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """The weights :meth:`frozen_features` depends on (the backbone without its trainable tail):
        the feature cache is valid while they and the store stay the same."""
        tail = tuple(f"{name}." for name in self.tail)
        return {name: value for name, value in self.backbone.state_dict().items() if not name.startswith(tail)}

    @torch.no_grad()
    def store_features(self, pixels, rows: np.ndarray, description: str) -> torch.Tensor:
        """Backbone features of ``rows`` in eval mode: from the feature cache through the trainable
        tail when there is one, else from the crops ``pixels`` reads (see :meth:`embed_store`)."""
        if self.cached_features is None:
            return self.embed_store(pixels, rows, description)
        return self.through_tail(self.cached_features[torch.from_numpy(rows)])

    @torch.no_grad()
    def through_tail(self, frozen: torch.Tensor) -> torch.Tensor:
        """Cached frozen features -> backbone features, in eval mode and in chunks."""
        if not self.tail:
            return frozen
        was_training = self.training
        self.eval()
        out = torch.cat(
            [
                self.trainable_features(frozen[i : i + self.embed_batch_size].to(self.device)).float()
                for i in range(0, len(frozen), self.embed_batch_size)
            ]
        )
        self.train(was_training)
        return out

    def embed_input(self, x: torch.Tensor, from_cache: bool) -> torch.Tensor:
        """Embeddings from :meth:`step_input`'s tensor, in the head's current mode."""
        return self.head(self.features_of(x, from_cache))

    def score(
        self, x: torch.Tensor, from_cache: bool, batch: dict[str, torch.Tensor], stage: str, embed: Callable | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """A triplet batch's loss (``None`` where it has none) and triplet accuracy, from
        :meth:`step_input`'s tensor (``embed``: how it is embedded, :meth:`embed_input` by default):
        the step's model work, which model.compile compiles for training. The loss is inside, as on a
        GPU its many small kernels and their backward cost more host time than the backbone's
        (experiments/benchmarks/GPU.md). The cache's lookup stays outside, so that the whole cache is
        no input of the graph (a CUDA graph would copy it before every replay)."""
        embeddings = (embed or self.embed_input)(x, from_cache)
        loss = None
        # Validation outfits have no class (label -1): a class loss such as SoftTriple has no value on them.
        if stage == "train" or not self.loss.uses_classes:
            loss = self.loss_value(embeddings, batch, self._loss_triplets(batch, embeddings, stage))
        with torch.no_grad():  # on the device: no host synchronization per step
            accuracy = self.batch_triplet_wins(embeddings.detach(), batch).float().mean()
        return loss, accuracy

    # ---------------------------------------------------------------------------------------- fit
    def _triplet_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor | None:
        x, from_cache, n = self.step_input(batch), self.cached_features is not None, len(batch["triplets"])
        score = self.score
        if stage == "train" and self.compiled_score is not None:
            # A deduplicated batch's row count, and the epoch's last batch's triplet count, vary: each
            # tensor's first dimension is a variable of the graph, so that it compiles once.
            for tensor in (x, *batch.values()):
                torch._dynamo.maybe_mark_dynamic(tensor, 0)
            score = self.compiled_score
        loss, accuracy = score(x, from_cache, batch, stage)
        if stage == "train":
            self._record_training_step(loss, accuracy, n)
            self._log_step_loss(loss, n)
            return loss
        if loss is not None:
            self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log(f"{stage}/triplet_accuracy", accuracy, on_epoch=True, prog_bar=stage == "val", batch_size=n, sync_dist=True)
        return loss

    def _record_training_step(self, loss: torch.Tensor, accuracy: torch.Tensor, n: int) -> None:
        self.train_means.add("train/loss_epoch", loss, n)
        self.train_means.add("train/triplet_accuracy", accuracy, n)

    def _log_step_loss(self, loss: torch.Tensor, n: int) -> None:
        if self.trainer._logger_connector.should_update_logs:  # the steps whose values reach the logger
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)

    def _member_steps_call(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``steps_per_call`` optimizer steps, each over ``step_size`` of the call's triplets in their
        order: the batches, and their order, of ``steps_per_call=null`` (models/member_steps.py)."""
        if "step_rows" not in batch:
            raise CtlError(
                f"model.steps_per_call={self.steps_per_call} needs training batches grouped by the data module: "
                f"set data.steps_per_call={self.steps_per_call} (its default follows the model's)"
            )
        if self.cached_features is None:
            raise CtlError("model.steps_per_call needs the feature cache callback (callbacks.feature_cache), which fills it before fit")
        optimizer = self.optimizers()
        size = batch["step_size"]
        for rows in batch["step_rows"].split(size):
            if self.member_steps.in_graph_update(rows, size):
                loss, accuracy = self.member_steps.optimizer_step(self.cached_features, rows, optimizer.optimizer)
            else:
                loss, accuracy = self.member_steps(self.cached_features, rows, size)
                optimizer.zero_grad()
                self.manual_backward(loss)
            # After an update in the graph the parameters hold no gradient: this only counts the step and
            # calls Lightning's hooks.
            optimizer.step()
            self._record_training_step(loss.detach(), accuracy, len(rows))
        loss = loss.detach().clone()  # a graph's output is overwritten by its next replay
        self._log_step_loss(loss, len(rows))
        return loss

    def on_train_epoch_end(self) -> None:
        for name, mean in self.train_means.pop().items():
            self.log(name, mean, on_step=False, on_epoch=True, prog_bar=name == "train/loss_epoch")

    def _loss_triplets(self, batch: dict[str, torch.Tensor], embeddings: torch.Tensor, stage: str) -> torch.Tensor:
        """The batch's own triplets, or on training batches those the loss's miner picks. Validation
        always scores the sampled triplets, so that runs with and without a miner compare."""
        if stage != "train" or self.loss.miner is None:
            return batch["triplets"]
        mined = self.loss.miner(embeddings, batch["labels"], batch["categories"])
        self.train_means.add("train/mined_triplets", float(len(mined)), 1)
        return mined

    def loss_value(self, embeddings: torch.Tensor, batch: dict[str, torch.Tensor], triplets: torch.Tensor) -> torch.Tensor:
        return self.loss(embeddings, batch["labels"], triplets)

    def batch_triplet_wins(self, embeddings: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        t = batch["triplets"]
        return triplet_wins(embeddings, t[:, 0], t[:, 1], t[:, 2])

    def pair_subspaces(self) -> CategorySubspaces | None:
        """Where item pairs are measured: ``None``, the one embedding space (a type-aware model: its
        subspaces, which the test metrics and the catalogs then use)."""
        return None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.steps_per_call is not None:
            return self._member_steps_call(batch)
        return self._triplet_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._triplet_step(batch, "val")

    def configure_optimizers(self):
        # Every trainable parameter, the loss's own included (SoftTriple's centers are learned).
        params = [p for p in self.parameters() if p.requires_grad]
        return self.optimizer_factory(params=params)

    # ------------------------------------------------------------------------------ test / predict
    def _embed_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = self.features(batch)
        return {"row_ids": batch["row_ids"], "similar": features.float(), "compatible": self.head(features).float()}

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """The batch's embeddings: the held-out metrics callback collects and scores them."""
        return {k: v.detach() for k, v in self._embed_batch(batch).items()}

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        out = self._embed_batch(batch)
        return {
            "row_ids": out["row_ids"],
            "similar": F.normalize(out["similar"], dim=1),
            "compatible": F.normalize(out["compatible"], dim=1),
        }

    # -------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Plain types and tensors only, so the checkpoint loads with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states is not None:
            torch.set_rng_state(states["torch"])
            kind, keys, pos, has_gauss, cached = states["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
            random.setstate(states["python"])
