"""Ops that make the host wait for a GPU, found on any device: what a test and a benchmark count
where a batch must not wait (GPU.md, session 16)."""

from __future__ import annotations

from functools import cache

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class DeviceWaits(TorchDispatchMode):
    """Every op the host must see a tensor's data for before it goes on: a value read into Python
    (``.item()``, ``int()``) or a result whose size depends on the data (``torch.unique``,
    ``nonzero``). On a GPU each waits for all the work queued there before it; on the CPU the same
    ops run, so they are found there too."""

    TAGS = (torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape)

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(tag in func.tags for tag in self.TAGS) and not self._integer_indexing(func, args):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _integer_indexing(func, args) -> bool:
        """``x[rows]``: tagged as indexing may be by a mask, but by integer rows its size is theirs."""
        return func is torch.ops.aten.index.Tensor and all(i is None or i.dtype != torch.bool for i in args[1])


@cache
def waits_for_data(event: str) -> bool:
    """Whether a profiler event (``aten::name``) is an op :class:`DeviceWaits` records, so that a GPU
    trace can name the callers of each. Two are left out: ``aten::item``, which runs
    ``aten::_local_scalar_dense`` (counted itself), and ``aten::index``, which the profiler does not
    tell apart by its indices' dtype (by integer rows, a gather that waits for nothing)."""
    namespace, _, name = event.partition("::")
    if namespace != "aten" or name in ("item", "index"):
        return False
    packet = getattr(torch.ops.aten, name, None)
    overloads = packet.overloads() if isinstance(packet, torch._ops.OpOverloadPacket) else []
    return any(tag in getattr(packet, overload).tags for overload in overloads for tag in DeviceWaits.TAGS)
