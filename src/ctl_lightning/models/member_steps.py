"""The frozen recipe's training step at a fixed shape, so that several run per trainer call and a
GPU can replay it from a CUDA graph (``model.steps_per_call``, ``model.cuda_graph``).

On a GPU the head-only step over cached features is bound by the host, not the card
(experiments/benchmarks/GPU.md): about 0.34 ms of kernels against 1.1 ms a step of Lightning's loop
and 3.6 ms of PyTorch's per-op launches. Two things remove that host work without changing the
optimisation:

* the step takes a batch's ``[B, 3]`` triplet rows as they come, each member its own row, instead of
  the deduplicated batch, whose row count varies and is only known after a wait on the GPU
  (:meth:`~ctl_lightning.models.heads.EmbeddingHead.forward_members` gives the deduplicated batch's
  loss and gradients at that fixed shape);
* one trainer call runs ``steps_per_call`` such steps (Lightning's manual optimisation), and on a
  CUDA device each full-size step replays one graph of its forward and backward
  (``torch.cuda.make_graphed_callables``); the optimizer step stays Lightning's, so step counting,
  precision and checkpoints are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from ctl_lightning.errors import CtlError
from ctl_lightning.evaluation.metrics import triplet_wins
from ctl_lightning.models.heads import EmbeddingHead


class MemberStep(nn.Module):
    """``[B, 3]`` triplet rows -> (the batch's loss, its triplet accuracy), from cached ``features``."""

    def __init__(self, head: EmbeddingHead, loss: nn.Module, features: torch.Tensor):
        super().__init__()
        self.head = head
        self.loss = loss
        self.features = features  # [store rows, F], not a buffer: the feature cache owns it

    def forward(self, triplet_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = triplet_rows.reshape(-1)
        embeddings = self.head.forward_members(self.features[rows], rows)
        members = torch.arange(len(rows), device=rows.device).view(-1, 3)
        loss = self.loss(embeddings, None, members)
        with torch.no_grad():
            accuracy = triplet_wins(embeddings.detach(), *members.unbind(1)).float().mean()
        return loss, accuracy


def check_recipe(module) -> None:
    """The fixed-shape step is the head-only recipe over cached features, with a loss over the batch's
    own triplets: anything else is a clear error naming the setting, never a silent other recipe."""
    if module.steps_per_call < 1:
        raise CtlError(f"model.steps_per_call must be a positive number of steps (or null), got {module.steps_per_call}")
    problems = [
        (
            not module.freeze_backbone or module.augment or module.feature_cache is False,
            "the feature cache (model.freeze_backbone=true, model.augment=false, model.feature_cache=auto or true)",
        ),
        (bool(module.tail), "model.trainable_stages=0"),
        (getattr(module.loss, "uses_classes", True), "a loss without classes (loss=triplet)"),
        (getattr(module.loss, "miner", None) is not None, "loss.miner=none"),
    ]
    for failed, needs in problems:
        if failed:
            raise CtlError(f"model.steps_per_call={module.steps_per_call} needs {needs}; set model.steps_per_call=null for other recipes")


def _autocast_without_cache() -> torch.autocast:
    """The autocast the trainer set around the step, with its weight-cast cache off, as graph capture
    and replay require."""
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)


class MemberSteps:
    """The step for each batch size: eager, or for full batches on a CUDA device a graph captured at
    the first one. Held outside the LightningModule's submodules (its head is already there)."""

    def __init__(self, head: EmbeddingHead, loss: nn.Module, cuda_graph: bool):
        self.head = head
        self.loss = loss
        self.cuda_graph = cuda_graph
        self.features: torch.Tensor | None = None
        self.eager: MemberStep | None = None
        self.graphed: nn.Module | None = None  # the full-size step, captured

    def __call__(self, features: torch.Tensor, triplet_rows: torch.Tensor, full_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if features is not self.features:  # a new feature cache: the graph read the old one
            self.features, self.eager, self.graphed = features, MemberStep(self.head, self.loss, features), None
        if not self.cuda_graph or len(triplet_rows) != full_size:
            return self.eager(triplet_rows)  # the epoch's last, smaller batch runs eagerly
        if triplet_rows.device.type != "cuda":
            raise CtlError(f"model.cuda_graph=true needs a CUDA device; this run trains on {triplet_rows.device}")
        with _autocast_without_cache():
            if self.graphed is None:
                self.graphed = self._capture(triplet_rows)
            return self.graphed(triplet_rows)

    def _capture(self, sample_rows: torch.Tensor) -> nn.Module:
        """The step's forward and backward captured at ``sample_rows``'s shape. Capture runs the step
        a few times to warm up: BatchNorm's running statistics are put back afterwards, so that the
        captured run's state is the eager run's."""
        norm = self.head[1]
        saved = {name: value.clone() for name, value in norm.named_buffers()}
        step = torch.cuda.make_graphed_callables(MemberStep(self.head, self.loss, self.features), (sample_rows,))
        with torch.no_grad():
            for name, value in norm.named_buffers():
                value.copy_(saved[name])
        return step
