"""Torch backend: plain torch ops, for tensors on any device torch runs on (cuda, xla, npu without
the AscendC kernels, ...). Per-tensor norms with fp32 (fp64 for fp64) accumulation."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .base import Hyper, MultiResult, PerTensorShardedOps

if TYPE_CHECKING:
    from .._fused import FusedCall


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Elementwise math type: fp32, fp64 for fp64 tensors."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _norm_dtype(device: torch.device) -> torch.dtype:
    """Norms accumulate in fp64 (torch's fp32 norm loses ~1e-5 relative on 1M elements), except on
    devices without fp64 (MPS), where fp32 is the best there is."""
    return torch.float32 if device.type == "mps" else torch.float64


def trust_ratio_t(
    w_n: torch.Tensor, g_n: torch.Tensor, wd: torch.Tensor, lr: torch.Tensor, hyper: Hyper
) -> torch.Tensor:
    """λ from the NORMS (not squares), elementwise over tensors: reference.trust_ratio in torch."""
    lam = hyper.coefficient * w_n / (g_n + wd * w_n + hyper.epsilon)
    if hyper.guard_zero_norm:
        lam = torch.where((w_n == 0) | (g_n == 0), torch.ones_like(lam), lam)
    if hyper.use_clip:
        pos = torch.where(lam > 0, torch.ones_like(lam), torch.zeros_like(lam))
        clipped = torch.clamp(lam / torch.where(lr > 0, lr, torch.ones_like(lr)), 0.0, 1.0)
        lam = torch.where(lr > 0, clipped, torch.where(torch.isnan(lam), lam, pos))
    return lam


class TorchBackend(PerTensorShardedOps):
    name = "torch"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def supports(self, device: torch.device) -> bool:
        return True

    def square_sum_all(
        self, weight: torch.Tensor, gradient: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        acc = _norm_dtype(weight.device)
        w_s = torch.linalg.vector_norm(weight, dtype=acc).square().float()
        g_s = torch.linalg.vector_norm(gradient, dtype=acc).square().float()
        return w_s, g_s

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
        acc = _acc_dtype(gradient)

        def t(x: float) -> torch.Tensor:
            return torch.tensor(x, dtype=acc, device=gradient.device)

        lam = trust_ratio_t(t(math.sqrt(w_s)), t(math.sqrt(g_s)), t(weight_decay), t(lr), hyper)
        out = gradient.to(acc) + weight_decay * weight.to(acc)
        return (lam.to(acc) * out).to(gradient.dtype)

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
        dev = grads[0].device
        acc = _norm_dtype(dev)
        g_n = torch.stack([torch.linalg.vector_norm(g, dtype=acc) for g in grads])
        found_inf = ~torch.isfinite(g_n).all()
        if bool(found_inf):  # one host sync: the caller must know whether to step at all
            return MultiResult(found_inf, torch.full((n,), math.nan, dtype=torch.float64))
        idx = [i for i in range(n) if adapt[i]]
        lam_all = torch.ones(n, dtype=torch.float64)
        if not idx:
            return MultiResult(found_inf, lam_all)
        w_n = torch.stack([torch.linalg.vector_norm(weights[i], dtype=acc) for i in idx])
        wd = torch.tensor([weight_decays[i] for i in idx], dtype=acc, device=dev)
        lr = torch.tensor([lrs[i] for i in idx], dtype=acc, device=dev)
        lam = trust_ratio_t(w_n, g_n[idx], wd, lr, hyper)
        for k, i in enumerate(idx):
            g, w = grads[i], weights[i]
            a = _acc_dtype(g)
            g.copy_(lam[k].to(a) * (g.to(a) + weight_decays[i] * w.to(a)))
        lam_all[idx] = lam.to(device="cpu", dtype=torch.float64)
        return MultiResult(found_inf, lam_all)

    def fused_sgd_(self, call: FusedCall) -> MultiResult:
        n = len(call.params)
        dev = call.params[0].device if n else torch.device("cpu")
        acc = _norm_dtype(dev)
        g_n = torch.stack([torch.linalg.vector_norm(g, dtype=acc) for g in call.grads])
        found_inf = ~torch.isfinite(g_n).all()
        if bool(found_inf):
            return MultiResult(found_inf, torch.full((n,), math.nan, dtype=torch.float64))
        idx = [i for i in range(n) if call.adapt[i]]
        lam_all = torch.ones(n, dtype=torch.float64)
        if idx:
            w_n = torch.stack([torch.linalg.vector_norm(call.params[i], dtype=acc) for i in idx])
            wd = torch.tensor(call.wd[idx], dtype=acc, device=dev)
            lr = torch.tensor(call.lr[idx], dtype=acc, device=dev)
            lam = trust_ratio_t(w_n, g_n[idx], wd, lr, call.hyper)
            lam_all[idx] = lam.to(device="cpu", dtype=torch.float64)
        lam_list = lam_all.tolist()
        for i, (p, g) in enumerate(zip(call.params, call.grads, strict=True)):
            a = _acc_dtype(p)
            gp = g.to(a)
            if call.adapt[i]:
                gp = lam_list[i] * (gp + float(call.wd[i]) * p.to(a))
            d = gp
            buf = call.bufs[i]
            if call.has_m[i] and buf is not None:
                mu = float(call.mu[i])
                m = gp if call.first[i] else mu * buf.to(a) + gp
                buf.copy_(m)
                d = gp + mu * buf.to(a) if call.nesterov[i] else buf.to(a)
            p.detach().copy_(p.to(a) - float(call.lr[i]) * d)
        return MultiResult(found_inf, lam_all)
