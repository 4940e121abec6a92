"""What every backend provides: one signature, chosen by the registry (``__init__.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .._fused import FusedCall

import torch


class LayoutMismatch(Exception):
    """A backend's fast path found a tensor that does not match its cached plan (raised before
    anything is written); the caller re-validates and retries on the general path."""


@dataclass(frozen=True)
class Hyper:
    """LARS hyper-parameters shared by every tensor of a call (DESIGN.md §1)."""

    epsilon: float = 1e-5
    coefficient: float = 1e-3
    use_clip: bool = False
    guard_zero_norm: bool = False


@dataclass
class MultiResult:
    """Outcome of a multi-tensor LARS rewrite.

    found_inf: 0-dim bool tensor, True when some gradient held inf/nan (then nothing was written).
    trust_ratio: float64 CPU tensor of λ per tensor (1 for tensors the filter excludes, nan when
        skipped), for logging.
    """

    found_inf: torch.Tensor
    trust_ratio: torch.Tensor


class Backend(Protocol):
    name: str

    def available(self) -> tuple[bool, str]:
        """(usable here, reason when not)."""
        ...

    def supports(self, device: torch.device) -> bool:
        """Whether tensors on ``device`` can be given to this backend."""
        ...

    def square_sum_all(
        self, weight: torch.Tensor, gradient: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """0-dim fp32 tensors (Σw², Σg²) on the inputs' device."""
        ...

    def lars_update(
        self,
        weight: torch.Tensor,
        gradient: torch.Tensor,
        w_s: float,
        g_s: float,
        weight_decay: float,
        lr: float,
        hyper: Hyper,
    ) -> torch.Tensor:
        """A new tensor g' = λ·(g + wd·w), in the gradient's dtype."""
        ...

    def multi_lars_(
        self,
        weights: list[torch.Tensor],
        grads: list[torch.Tensor],
        adapt: list[bool],
        weight_decays: list[float],
        lrs: list[float],
        hyper: Hyper,
    ) -> MultiResult:
        """In place: grads[i] ← λ_i·(g_i + wd_i·w_i) where adapt[i]; every gradient is checked
        for inf/nan first, and if one is non-finite no tensor is written."""
        ...

    def fused_sgd_(self, call: FusedCall) -> MultiResult:
        """The whole LARS + momentum-SGD step (DESIGN.md §1, fused path): parameters and
        momentum buffers updated in place, gradients left as they are; nothing written when a
        gradient holds inf/nan."""
        ...
