"""The small model the tests train (the optimizer tests, the emulated kernels, the multi-process
engine checks of tests/test_distributed.py and tests/_torchrun_worker.py): two Linear layers with
biases and a LayerNorm between them; and for the engine checks a seeded 16-row batch per step
that the ranks split."""

from __future__ import annotations

import torch
from torch import nn

ROWS = 16


class Net(nn.Module):
    """6 inputs, 3 classes. Biases and a LayerNorm named as in BERT, so MindSpore's default filter
    (by name) applies; ``hidden`` is the width between the two Linear layers."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, hidden)
        self.LayerNorm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, 3)

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
