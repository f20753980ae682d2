"""Training-epoch means summed on the device and logged once per epoch.

Each ``self.log`` call costs Lightning about a millisecond of host time (it moves its whole result
record to the value's device), which is more than a head-only step over cached features takes on a
GPU. Training steps therefore add their values here, as device tensors (no host synchronization), and
the module logs the means at the end of the epoch under the names Lightning would have given them.
"""

from __future__ import annotations

import torch


class EpochMeans:
    def __init__(self):
        self.sums: dict[str, tuple[torch.Tensor, int]] = {}

    def add(self, name: str, value: torch.Tensor | float, weight: int) -> None:
        """One kernel a value on a GPU, into a sum of its own: ``value`` may be a CUDA graph's output,
        which the next replay overwrites."""
        value = torch.as_tensor(value).detach().float()
        if name in self.sums:
            total, count = self.sums[name]
            total.add_(value, alpha=weight)
            self.sums[name] = (total, count + weight)
        else:
            self.sums[name] = (value * weight, weight)

    def pop(self) -> dict[str, torch.Tensor]:
        """The weighted mean of each name since the last pop, as Lightning's ``on_epoch=True`` gives it."""
        means = {name: total / count for name, (total, count) in self.sums.items()}
        self.sums.clear()
        return means
