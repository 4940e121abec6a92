"""NumPy backend: the reference itself, for tensors on any device (copied to the host).

The floor: used when the native module is absent, or when asked for by name.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import reference

if TYPE_CHECKING:
    from .._fused import FusedCall
from .base import Hyper, MultiResult, PerTensorShardedOps


def _np(t: torch.Tensor) -> np.ndarray:
    # NumPy has no bfloat16: bf16 (and fp16, for uniformity) are widened exactly to fp32 first.
    t = t.detach().resolve_neg()  # (negative bit: the values, not the memory)
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.cpu().numpy()


def reference_fused_step(call: FusedCall) -> tuple[bool, list[float]]:
    """The reference step per tensor; no writes when a gradient is non-finite."""

    def np64(t: torch.Tensor) -> np.ndarray:
        return t.detach().resolve_neg().to(device="cpu", dtype=torch.float64).numpy()

    gs = [np64(g) for g in call.grads]
    if not all(math.isfinite(float(np.sum(g * g))) for g in gs):
        return True, [math.nan] * len(gs)
    lams = []
    outs = []
    h = call.hyper
    for i, p in enumerate(call.params):
        buf = call.bufs[i]
        m = None if (buf is None or call.first[i]) else np64(buf)
        w, m_new, _, lam = reference.lars_momentum_step(
            np64(p),
            gs[i],
            m,
            lr=float(call.lr[i]),
            weight_decay=float(call.wd[i]),
            momentum=float(call.mu[i]) if call.has_m[i] else 0.0,
            nesterov=bool(call.nesterov[i]),
            lars=bool(call.adapt[i]),
            epsilon=h.epsilon,
            coefficient=h.coefficient,
            use_clip=h.use_clip,
            guard_zero_norm=h.guard_zero_norm,
        )
        outs.append((w, m_new))
        lams.append(lam)
    for i, (w, m_new) in enumerate(outs):
        call.params[i].detach().copy_(torch.from_numpy(w))
        buf = call.bufs[i]
        if buf is not None and m_new is not None:
            buf.copy_(torch.from_numpy(m_new))
    return False, lams


class NumpyBackend(PerTensorShardedOps):
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
        outs: list[np.ndarray | None] = []
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

    def fused_sgd_(self, call: FusedCall) -> MultiResult:
        found, lams = reference_fused_step(call)
        dev = call.params[0].device if call.params else torch.device("cpu")
        return MultiResult(torch.tensor(found, device=dev), torch.tensor(lams, dtype=torch.float64))
