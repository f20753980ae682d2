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
        self.sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def add(self, name: str, value: torch.Tensor | float, weight: int) -> None:
        value = torch.as_tensor(value).detach().float()
        total, count = self.sums.get(name, (torch.zeros((), device=value.device), torch.zeros((), device=value.device)))
        self.sums[name] = (total + value * weight, count + weight)

    def pop(self) -> dict[str, torch.Tensor]:
        """The weighted mean of each name since the last pop, as Lightning's ``on_epoch=True`` gives it."""
        means = {name: total / count for name, (total, count) in self.sums.items()}
        self.sums.clear()
        return means
