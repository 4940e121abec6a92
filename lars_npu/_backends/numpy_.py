"""NumPy backend: the reference itself, for tensors on any device (copied to the host).

The floor: used when the native module is absent, or when asked for by name.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import reference
from .base import Hyper, MultiResult


def _np(t: torch.Tensor) -> np.ndarray:
    # NumPy has no bfloat16: bf16 (and fp16, for uniformity) are widened exactly to fp32 first.
    t = t.detach()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.cpu().numpy()


class NumpyBackend:
    name = "numpy"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def supports(self, device: torch.device) -> bool:
        return True

    def square_sum_all(
        self, weight: torch.Tensor, gradient: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w_s, g_s = reference.square_sum_all(_np(weight), _np(gradient))
        dev = weight.device
        return torch.tensor(w_s, device=dev), torch.tensor(g_s, device=dev)

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
        out = reference.lars_update(
            _np(weight).astype(np.float64),
            _np(gradient).astype(np.float64),
            w_s,
            g_s,
            weight_decay,
            lr,
            epsilon=hyper.epsilon,
            coefficient=hyper.coefficient,
            use_clip=hyper.use_clip,
            guard_zero_norm=hyper.guard_zero_norm,
        )
        return torch.from_numpy(out).to(device=gradient.device, dtype=gradient.dtype)

    def multi_lars_(
        self,
        weights: list[torch.Tensor],
        grads: list[torch.Tensor],
        adapt: list[bool],
        weight_decays: list[float],
        lrs: list[float],
        hyper: Hyper,
    ) -> MultiResult:
        n = len(grads)
        lam = torch.ones(n, dtype=torch.float64)
        dev = grads[0].device if n else torch.device("cpu")
        gs = [_np(g).astype(np.float64) for g in grads]
        g_sums = [float(np.sum(g * g)) for g in gs]
        if not all(math.isfinite(s) for s in g_sums):
            lam.fill_(math.nan)
            return MultiResult(torch.tensor(True, device=dev), lam)
        outs = []
        for i in range(n):
            if not adapt[i]:
                outs.append(None)
                continue
            w = _np(weights[i]).astype(np.float64)
            lam[i] = reference.trust_ratio(
                float(np.sum(w * w)),
                g_sums[i],
                weight_decays[i],
                lrs[i],
                epsilon=hyper.epsilon,
                coefficient=hyper.coefficient,
                use_clip=hyper.use_clip,
                guard_zero_norm=hyper.guard_zero_norm,
            )
            outs.append(np.asarray(lam[i].item() * (gs[i] + weight_decays[i] * w)))
        for g, out in zip(grads, outs, strict=True):  # every value computed before any write
            if out is not None:
                g.copy_(torch.from_numpy(out))
        return MultiResult(torch.tensor(False, device=dev), lam)
