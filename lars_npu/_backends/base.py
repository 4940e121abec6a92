"""What every backend provides: one signature, chosen by the registry (``__init__.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

if TYPE_CHECKING:
    from .._fused import FusedCall

import numpy as np
import torch

# The largest finite float32: group hyper-parameters beyond it would overflow the fp32 tensors
# they scale (and the AscendC kernels take them in fp32), so they are refused, by name.
FP32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class Hyper:
    """LARS hyper-parameters shared by every tensor of a call (docs/semantics.md)."""

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


class TensorOps(Protocol):
    """The per-tensor operations (what the per-tensor defaults below are built from)."""

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


class Backend(TensorOps, Protocol):
    """What the optimizer, the functional API and the check tool use of a backend."""

    name: str
    # The dtypes it takes (None: every supported dtype; the check matrix skips the others).
    dtypes: tuple[torch.dtype, ...] | None
    # Its fused step checks every tensor natively, each step, before it writes (a refusal is a
    # lars_npu.TensorError naming the parameter): the fused driver keeps no checks of its own.
    verifies_layout: bool

    def available(self) -> tuple[bool, str]:
        """(usable here, reason when not)."""
        ...

    def supports(self, device: torch.device) -> bool:
        """Whether tensors on ``device`` can be given to this backend."""
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
        """The whole LARS + momentum-SGD step (docs/semantics.md, "The fused step"): parameters and
        momentum buffers updated in place, gradients left as they are; nothing written when a
        gradient holds inf/nan."""
        ...

    # -- for callers that combine the sums across processes (lars_npu.distributed) --
    def square_sums(
        self, weights: list[torch.Tensor], grads: list[torch.Tensor], adapt: list[bool]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """1-D tensors (Σw² of every tensor, 0 where not adapted; Σg² of every tensor), fp32 or
        fp64, on the host or the tensors' device. Default: :func:`per_tensor_square_sums`."""
        ...

    def rewrite_given_sums_(
        self,
        weights: list[torch.Tensor],
        grads: list[torch.Tensor],
        w_s: np.ndarray,
        g_s: np.ndarray,
        weight_decays: list[float],
        lrs: list[float],
        hyper: Hyper,
    ) -> np.ndarray:
        """In place, grads[i] ← λ_i·(g_i + wd_i·w_i), λ from the GIVEN finite sums of squares
        (e.g. all-reduced over ranks); returns λ as applied. Default:
        :func:`per_tensor_rewrite_given_sums_`."""
        ...


def per_tensor_square_sums(
    backend: TensorOps, weights: list[torch.Tensor], grads: list[torch.Tensor], adapt: list[bool]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The default ``square_sums``: the backend's SquareSumAll once per tensor, stacked where the
    tensors are (no host round trip per tensor)."""
    if not grads:
        empty = torch.zeros(0, dtype=torch.float32)
        return empty, empty
    device = grads[0].device
    pairs = [backend.square_sum_all(w, g) for w, g in zip(weights, grads, strict=True)]
    w_s = torch.stack([x.float().to(device) for x, _ in pairs])
    g_s = torch.stack([y.float().to(device) for _, y in pairs])
    keep = torch.tensor(adapt, dtype=torch.bool, device=device)
    return torch.where(keep, w_s, torch.zeros_like(w_s)), g_s


def lambdas_from_sums(
    w_s: np.ndarray, g_s: np.ndarray, weight_decays: list[float], lrs: list[float], hyper: Hyper
) -> np.ndarray:
    """λ per tensor from given sums of squares, as the NumPy reference computes it."""
    from .. import reference

    return np.asarray([
        reference.trust_ratio(
            float(w_s[i]), float(g_s[i]), weight_decays[i], lrs[i], epsilon=hyper.epsilon,
            coefficient=hyper.coefficient, use_clip=hyper.use_clip,
            guard_zero_norm=hyper.guard_zero_norm,
        )
        for i in range(len(weight_decays))
    ], dtype=np.float64)  # fmt: skip


def per_tensor_rewrite_given_sums_(
    backend: TensorOps,
    weights: list[torch.Tensor],
    grads: list[torch.Tensor],
    w_s: np.ndarray,
    g_s: np.ndarray,
    weight_decays: list[float],
    lrs: list[float],
    hyper: Hyper,
) -> np.ndarray:
    """The default ``rewrite_given_sums_``: one ``lars_update`` per tensor, copied into the
    gradient; λ as the reference computes it from the same sums."""
    lam = lambdas_from_sums(w_s, g_s, weight_decays, lrs, hyper)
    for i, (w, g) in enumerate(zip(weights, grads, strict=True)):
        if g.numel():
            g.copy_(backend.lars_update(w, g, w_s[i], g_s[i], weight_decays[i], lrs[i], hyper))
    return lam


class PerTensorShardedOps:
    """The sharded step's two pieces as the per-tensor defaults, for backends without a native
    multi-tensor path (numpy, torch), and the protocol's defaults for such backends."""

    dtypes: tuple[torch.dtype, ...] | None = None
    verifies_layout = False

    def square_sums(
        self, weights: list[torch.Tensor], grads: list[torch.Tensor], adapt: list[bool]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return per_tensor_square_sums(cast(TensorOps, self), weights, grads, adapt)

    def rewrite_given_sums_(
        self,
        weights: list[torch.Tensor],
        grads: list[torch.Tensor],
        w_s: np.ndarray,
        g_s: np.ndarray,
        weight_decays: list[float],
        lrs: list[float],
        hyper: Hyper,
    ) -> np.ndarray:
        return per_tensor_rewrite_given_sums_(
            cast(TensorOps, self),
            weights, grads, w_s, g_s, weight_decays, lrs, hyper,
        )  # fmt: skip
