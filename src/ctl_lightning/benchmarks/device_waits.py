"""Ops that make the host wait for a GPU, found on any device: what a test and a benchmark count
where a batch must not wait (GPU.md, session 16)."""

from __future__ import annotations

from collections import Counter
from functools import cache

import torch
from torch.utils._python_dispatch import TorchDispatchMode

TAGS = (torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape)  # torch's marks of such ops


def _tagged(op: torch._ops.OpOverload) -> bool:
    return any(tag in op.tags for tag in TAGS)


class DeviceWaits(TorchDispatchMode):
    """Every op the host must see a tensor's data for before it goes on: a value read into Python
    (``.item()``, ``int()``) or a result whose size depends on the data (``torch.unique``,
    ``nonzero``). On a GPU each waits for all the work queued there before it; on the CPU the same
    ops run, so they are found there too."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _tagged(func) and not self._integer_indexing(func, args):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _integer_indexing(func, args) -> bool:
        """``x[rows]``: tagged as indexing may be by a mask, but by integer rows its size is theirs."""
        return func is torch.ops.aten.index.Tensor and all(i is None or i.dtype != torch.bool for i in args[1])


@cache
def needs_data_on_host(event: str) -> bool:
    """Whether a profiler event (``aten::name``) is of an op torch tags as needing its input's data on
    the host (``TAGS``, as :class:`DeviceWaits` checks). The profiler names an op without its overload, so
    an op counts where any overload is tagged: ``repeat_interleave`` given ``output_size`` needs no
    data, yet is counted. Two are left out: ``aten::item``, which runs ``aten::_local_scalar_dense``
    (counted itself), and ``aten::index``, which by integer rows is a gather that needs no data."""
    namespace, _, name = event.partition("::")
    if namespace != "aten" or name in ("item", "index"):
        return False
    packet = getattr(torch.ops.aten, name, None)
    overloads = packet.overloads() if isinstance(packet, torch._ops.OpOverloadPacket) else []
    return any(_tagged(getattr(packet, overload)) for overload in overloads)


READS_HEADING = "Ops that need a tensor's data on the host, by caller"
MAX_CALLERS = 8  # enclosing ranges that tell apart the callers of such an op
# What reading a CUDA tensor's value calls after copying it (cudaMemcpy: the synchronous copy).
GPU_SYNCS = frozenset({"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy"})


def reads_by_caller(events, steps: int) -> tuple[str, dict[str, float], dict[str, float]]:
    """The ops of a profiler trace's ``events`` that need a tensor's data on the host, by caller: a
    table, and each op's count a step, in all and of those that waited for the GPU. Adam's step count,
    for one, is a CPU tensor, and reading it waits for nothing. Of such ops nested in one another
    (``torch.unique`` on CUDA reads its output's length with ``.item()``), only the innermost counts:
    one read, one wait."""
    calls: Counter[tuple[str, tuple[str, ...]]] = Counter()
    waits: Counter[tuple[str, tuple[str, ...]]] = Counter()
    for event in events:
        if needs_data_on_host(event.name) and not _reads_below(event):
            key = event.name, tuple(callers(event)[:MAX_CALLERS])
            calls[key] += 1
            waits[key] += waits_for_gpu(event)
    lines = [f"{READS_HEADING} (innermost first): a step, of them waiting for the GPU, op, callers"]
    for (name, within), count in calls.most_common():
        lines.append(f"{count / steps:8.2f} {waits[name, within] / steps:8.2f}  {name}  " + " <- ".join(within or ["-"]))
    return "\n".join(lines) + "\n", _per_op(calls, steps), _per_op(waits, steps)


def callers(event) -> list[str]:
    """The ranges a profiler event ran in, innermost first: the ops that called it, annotated ranges
    (``Optimizer.step#Adam.step``) and, in a trace taken ``with_stack``, Python frames (``file.py(line):
    function``, the line the function's first). Left out: C functions' events, whose names hold an
    object's address, and the range of each step (``ProfilerStep#4``, or ``ProfilerStep*``)."""
    names, parent = [], event.cpu_parent
    while parent is not None:
        if not parent.name.startswith(("<built-in", "ProfilerStep")):
            names.append(parent.name)
        parent = parent.cpu_parent
    return names


def waits_for_gpu(event) -> bool:
    """Whether a traced op synchronised with the GPU: a CUDA runtime sync among the calls below it."""
    return _any_below(event, GPU_SYNCS.__contains__)


def _reads_below(event) -> bool:
    return _any_below(event, needs_data_on_host)


def _any_below(event, matches) -> bool:
    """Whether the name of any event below ``event`` in the trace's tree ``matches``."""
    return any(matches(child.name) or _any_below(child, matches) for child in event.cpu_children)


def _per_op(counts: Counter, steps: int) -> dict[str, float]:
    ops: Counter[str] = Counter()
    for (name, _), count in counts.items():
        ops[name] += count
    return {name: count / steps for name, count in ops.items() if count}
