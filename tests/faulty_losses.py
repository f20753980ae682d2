"""Losses with a planted bug, for the headline guard (tests/test_headline_guard.py).

train.py builds them from the command line (``loss._target_=faulty_losses.SwappedTripletLoss``, with
``tests/`` on PYTHONPATH), so the guard sees exactly the run a user would make with that bug.
"""

from __future__ import annotations

import torch

from ctl_lightning.losses import TripletLoss


class SwappedTripletLoss(TripletLoss):
    """Positives and negatives swapped: the swapped-label bug, and the sign error ``d(a,n) - d(a,p)``
    of a broken loss, which is the same function. It trains the model away from compatibility."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
        return super().forward(embeddings, labels, triplets[:, [0, 2, 1]])
