"""The frozen recipe's training step at a fixed shape, so that several run per trainer call and a
GPU can replay it from a CUDA graph (``model.steps_per_call``, ``model.cuda_graph``).

On a GPU the head-only step over cached features is bound by the host, not the card
(experiments/benchmarks/GPU.md): about 0.34 ms of kernels against 1.1 ms a step of Lightning's loop
and 3.6 ms of PyTorch's per-op launches. Two things remove that host work without changing the
optimisation:

* the step takes a batch's ``[B, 3]`` triplet rows as they come, each member its own row, instead of
  the deduplicated batch, whose row count varies from batch to batch (a CUDA graph has one shape)
  (:meth:`~ctl_lightning.models.heads.EmbeddingHead.forward_members` gives the deduplicated batch's
  loss and gradients at that fixed shape);
* one trainer call runs ``steps_per_call`` such steps (Lightning's manual optimisation), and on a
  CUDA device each full-size step replays a CUDA graph (``model.cuda_graph``):

  - ``true``: a graph of its forward and backward (``torch.cuda.make_graphed_callables``); the
    optimizer step stays Lightning's, so step counting, precision and checkpoints are unchanged.
    On an H200 that step still took 1.55 ms against 0.45 ms of kernels: two graph launches, Adam's
    update and Lightning's Python around them (GPU.md, session 13);
  - ``step``: one graph of the whole optimizer step, forward, backward and Adam's update
    (:class:`StepGraph`), one launch a step. Lightning's ``optimizer.step()`` still follows each
    replay, so steps are counted, hooks called and checkpoints written as before; the parameters hold
    no ``.grad`` outside the graph, so it finds nothing more to update.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

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


# model.cuda_graph: none; each full-size step's forward and backward; the whole optimizer step.
CUDA_GRAPH_CHOICES = (False, True, "step")
WARMUP_STEPS = 3  # steps run before a capture (then undone), as CUDA graph capture asks


def _autocast_without_cache() -> torch.autocast:
    """The autocast the trainer set around the step, with its weight-cast cache off, as graph capture
    and replay require."""
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)


class MemberSteps:
    """The step for each batch size: eager, or for full batches on a CUDA device a graph captured at
    the first one. Held outside the LightningModule's submodules (its head is already there)."""

    def __init__(self, head: EmbeddingHead, loss: nn.Module, cuda_graph: bool | str):
        self.head = head
        self.loss = loss
        self.cuda_graph = cuda_graph
        self.features: torch.Tensor | None = None
        self.eager: MemberStep | None = None
        self.graphed: nn.Module | StepGraph | None = None  # the full-size step, captured

    def _use(self, features: torch.Tensor) -> None:
        if features is not self.features:  # a new feature cache: the graph read the old one
            self.features, self.eager, self.graphed = features, MemberStep(self.head, self.loss, features), None

    def in_graph_update(self, triplet_rows: torch.Tensor, full_size: int) -> bool:
        """Whether this step's update runs inside its graph (:meth:`optimizer_step`), not after it."""
        return self.cuda_graph == "step" and len(triplet_rows) == full_size

    def __call__(self, features: torch.Tensor, triplet_rows: torch.Tensor, full_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's loss and triplet accuracy; its backward and update are the caller's."""
        self._use(features)
        if not self.cuda_graph or len(triplet_rows) != full_size:
            return self.eager(triplet_rows)  # the epoch's last, smaller batch runs eagerly
        _require_cuda(self.cuda_graph, triplet_rows)
        with _autocast_without_cache():
            if self.graphed is None:
                self.graphed = self._capture(triplet_rows)
            return self.graphed(triplet_rows)

    def optimizer_step(
        self, features: torch.Tensor, triplet_rows: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A full-size step's forward, backward and update, replayed from one graph (``cuda_graph=step``)."""
        self._use(features)
        _require_cuda(self.cuda_graph, triplet_rows)
        if self.graphed is None:
            with _autocast_without_cache():  # a replay runs the recorded kernels whatever autocast says
                self.graphed = StepGraph(self.eager, optimizer, triplet_rows)
        return self.graphed(triplet_rows)

    def _capture(self, sample_rows: torch.Tensor) -> nn.Module:
        """The step's forward and backward captured at ``sample_rows``'s shape. Capture runs the step
        a few times to warm up: BatchNorm's running statistics are put back afterwards, so that the
        captured run's state is the eager run's."""
        restore = _snapshot(self.head)
        step = torch.cuda.make_graphed_callables(MemberStep(self.head, self.loss, self.features), (sample_rows,))
        restore()
        return step


# Devices a graph is captured on; the CPU tests add "cpu", with _record replaying eagerly.
GRAPH_DEVICES = ("cuda",)


def _require_cuda(cuda_graph: bool | str, triplet_rows: torch.Tensor) -> None:
    if triplet_rows.device.type not in GRAPH_DEVICES:
        raise CtlError(f"model.cuda_graph={str(cuda_graph).lower()} needs a CUDA device; this run trains on {triplet_rows.device}")


def _snapshot(module: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Callable[[], None]:
    """A function that puts back ``module``'s parameters and buffers (BatchNorm's statistics) and
    ``optimizer``'s state as they are now, after the warm-up steps a capture runs. State the optimizer
    creates later is zeroed: Adam's fresh state (step count and both moments) is zeros, so the next
    update is the first, as it would have been."""
    tensors = [*module.parameters(), *module.buffers()]
    saved = [t.detach().clone() for t in tensors]
    state = {} if optimizer is None else optimizer.state
    saved_state = {(p, k): v.clone() for p, values in state.items() for k, v in values.items() if torch.is_tensor(v)}

    @torch.no_grad()
    def restore() -> None:
        for tensor, value in zip(tensors, saved, strict=True):
            tensor.copy_(value)
        for p, values in state.items():
            for k, v in values.items():
                if (p, k) in saved_state:
                    v.copy_(saved_state[(p, k)])
                elif torch.is_tensor(v):
                    v.zero_()

    return restore


class StepGraph:
    """One full-size optimizer step over cached features, forward, backward and Adam's update,
    recorded once and then replayed on each step's rows (``model.cuda_graph=step``).

    Before recording, the step runs ``WARMUP_STEPS`` times (on a side stream on a GPU) so that Adam
    creates its state outside the graph and the libraries load their kernels; the head's weights and
    BatchNorm statistics and Adam's state are then put back, so the run trains as if they had not run.
    After the record the parameters hold no ``.grad``: the graph keeps its own gradient tensors.
    """

    def __init__(self, step: MemberStep, optimizer: torch.optim.Optimizer, sample_rows: torch.Tensor):
        if not isinstance(optimizer, torch.optim.Adam):
            raise CtlError(f"model.cuda_graph=step records Adam's update (optimizer=adam), not {type(optimizer).__name__}")
        self.step, self.optimizer = step, optimizer
        self.rows = sample_rows.clone()  # the graph's input: each step's rows are copied in
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        if self.rows.is_cuda:
            # Adam's update then keeps its step count on the device and reads no host value, as a
            # replayed graph needs; the update is the same.
            for group in optimizer.param_groups:
                group["capturable"] = True
            for p, state in optimizer.state.items():
                if "step" in state:
                    state["step"] = state["step"].to(p.device)
        restore = _snapshot(step.head, optimizer)
        side = torch.cuda.Stream() if self.rows.is_cuda else None
        if side is not None:
            side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")  # the warm-up runs uncaptured, once
            for _ in range(WARMUP_STEPS):
                self._run()
        if side is not None:
            torch.cuda.current_stream().wait_stream(side)
        restore()
        self.replay = _record(self._run)
        self.gradients = [p.grad for p in self.params]  # the graph writes these; kept alive with it
        optimizer.zero_grad(set_to_none=True)

    def _run(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        loss, accuracy = self.step(self.rows)
        loss.backward()
        with torch.autocast(self.rows.device.type, enabled=False):
            self.optimizer.step()
        return loss.detach(), accuracy

    def __call__(self, triplet_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.rows.copy_(triplet_rows)
        loss, accuracy = self.replay()
        for p in self.params:  # an eager replay sets them; Lightning's optimizer.step() must find none
            p.grad = None
        return loss, accuracy


def _record(run: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """``run`` captured in one CUDA graph: a function that replays it and returns its outputs (the
    same tensors each time, overwritten by each replay)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = run()

    def replay() -> tuple[torch.Tensor, torch.Tensor]:
        graph.replay()
        return outputs

    return replay
