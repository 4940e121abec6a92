"""The small model and data every multi-process engine check trains (tests/test_distributed.py,
tests/_torchrun_worker.py): two Linear layers with biases and a LayerNorm between them, and a
seeded 16-row batch per step that the ranks split."""

from __future__ import annotations

import torch
from torch import nn

ROWS = 16


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.LayerNorm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.LayerNorm(self.fc1(x))))


def make_net() -> Net:
    torch.manual_seed(0)
    return Net()


def batch(step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [rank·16/world, (rank+1)·16/world) of step's 16-row batch."""
    gen = torch.Generator().manual_seed(step)
    x, y = torch.randn(ROWS, 6, generator=gen), torch.randint(0, 3, (ROWS,), generator=gen)
    lo, hi = rank * ROWS // world, (rank + 1) * ROWS // world
    return x[lo:hi], y[lo:hi]
