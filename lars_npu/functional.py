"""Torch-level LARS ops. Validate, pick one backend through the registry, call it.

``square_sum_all`` and ``lars_update`` mirror MindSpore's ``SquareSumAll`` and ``LARSUpdate``;
``lars_`` is the multi-tensor in-place rewrite the optimizer uses (one backend call per step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._backends import Hyper, MultiResult, resolve
from ._compat import coo_members, max_abs_norms
from ._ops import TensorError, TensorTypeError, renamed

__all__ = [
    "SUPPORTED_DTYPES",
    "check_hyper",
    "lars_",
    "lars_update",
    "sparse_members",
    "sparse_values",
    "square_sum_all",
]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def to_float(
    x: object,
    name: str,
    *,
    minimum: float | None = None,
    positive: bool = False,
    maximum: float | None = None,
) -> float:
    """A finite Python float from a number or a one-element tensor, or a TypeError/ValueError
    naming ``name``."""
    if isinstance(x, bool) or not isinstance(x, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    if isinstance(x, torch.Tensor):
        if x.numel() != 1 or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be a real scalar, got a tensor of shape {tuple(x.shape)}")
        x = x.item()
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {v:g}")
    return v


def check_hyper(
    epsilon: object, coefficient: object, use_clip: object, guard_zero_norm: object = False
) -> Hyper:
    """Validated LARS hyper-parameters (ε > 0, θ > 0, finite; flags are real bools)."""
    eps = to_float(epsilon, "epsilon", positive=True)
    coef = to_float(coefficient, "coefficient", positive=True)
    if not isinstance(use_clip, bool):
        raise TypeError(f"use_clip must be a bool, got {type(use_clip).__name__}")
    if not isinstance(guard_zero_norm, bool):
        raise TypeError(f"guard_zero_norm must be a bool, got {type(guard_zero_norm).__name__}")
    return Hyper(eps, coef, use_clip, guard_zero_norm)


def _check_tensor(t: object, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_sparse or t.layout != torch.strided:
        raise ValueError(f"{name} is sparse ({t.layout}); LARS needs dense tensors")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} has dtype {t.dtype}; supported: float32, float16, bfloat16, float64"
        )
    return t


def check_pair(weight: object, gradient: object, wname: str, gname: str) -> None:
    """Raise unless weight and gradient are dense float tensors of one shape, dtype and device."""
    w = _check_tensor(weight, wname)
    g = _check_tensor(gradient, gname)
    if w.shape != g.shape:
        raise ValueError(f"{gname} has shape {tuple(g.shape)} but {wname} has {tuple(w.shape)}")
    if w.dtype != g.dtype:
        raise TypeError(f"{gname} has dtype {g.dtype} but {wname} has {w.dtype}")
    if w.device != g.device:
        raise ValueError(f"{gname} is on {g.device} but {wname} is on {w.device}")


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """True when no tensor holds inf/nan. Uses max|x| (the inf-norm), which is finite exactly
    when every element is: a 2-norm in the tensor's dtype would overflow for large finite fp16
    values (above 65504) and skip a good step."""
    tensors = [t for t in tensors if t.numel()]  # the inf-norm of nothing is undefined
    if not tensors:
        return True
    norms = max_abs_norms(tensors)
    return all(bool(torch.isfinite(x)) for x in norms)


def sparse_values(g: torch.Tensor) -> torch.Tensor:
    """The values of a sparse gradient (COO, CSR, CSC, BSR, BSC) as the inner optimizer will add
    them, for the inf/nan check: an uncoalesced COO gradient is coalesced first, since duplicates
    that sum beyond the dtype's range become inf."""
    if g.layout == torch.sparse_coo:
        return coo_members(g if g.is_coalesced() else g.coalesce())[0]
    return g.values()


def sparse_members(g: torch.Tensor) -> list[torch.Tensor]:
    """The dense tensors a sparse tensor is stored in (values and indices), for the sharing
    check: the inner optimizer reads them all."""
    if g.layout == torch.sparse_coo:
        return list(coo_members(g))
    if g.layout in (torch.sparse_csr, torch.sparse_bsr):
        return [g.values(), g.crow_indices(), g.col_indices()]
    return [g.values(), g.ccol_indices(), g.row_indices()]


def square_sum_all(
    weight: torch.Tensor, gradient: torch.Tensor, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """MindSpore ``SquareSumAll``: 0-dim fp32 tensors ``(Σw², Σg²)``, accumulated in ≥ fp32."""
    check_pair(weight, gradient, "weight", "gradient")
    with torch.no_grad():
        return resolve(weight.device, backend).square_sum_all(weight, gradient)


def lars_update(
    weight: torch.Tensor,
    gradient: torch.Tensor,
    norm_weight: float | torch.Tensor,
    norm_gradient: float | torch.Tensor,
    weight_decay: float | torch.Tensor,
    learning_rate: float | torch.Tensor,
    *,
    epsilon: float = 1e-5,
    coefficient: float = 1e-3,
    use_clip: bool = False,
    guard_zero_norm: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """MindSpore ``LARSUpdate`` (its input order): returns ``g' = λ·(g + wd·w)``.

    ``norm_weight`` / ``norm_gradient`` are the SUMS OF SQUARES Σw², Σg² (as in MindSpore), e.g.
    from :func:`square_sum_all`. λ = θ·√Σw² / (√Σg² + wd·√Σw² + ε); with ``use_clip``,
    λ = max(min(λ/lr, 1), 0). The result is a new tensor in the gradient's dtype.
    """
    check_pair(weight, gradient, "weight", "gradient")
    w_s = to_float(norm_weight, "norm_weight", minimum=0.0)
    g_s = to_float(norm_gradient, "norm_gradient", minimum=0.0)
    wd = to_float(weight_decay, "weight_decay", minimum=0.0)
    lr = to_float(learning_rate, "learning_rate", minimum=0.0)
    hyper = check_hyper(epsilon, coefficient, use_clip, guard_zero_norm)
    with torch.no_grad():
        return resolve(weight.device, backend).lars_update(
            weight, gradient, w_s, g_s, wd, lr, hyper
        )


def lars_(
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    *,
    adapt: Sequence[bool],
    weight_decays: Sequence[float],
    lrs: Sequence[float],
    hyper: Hyper,
    backend: str = "auto",
    names: Sequence[str] | None = None,
) -> MultiResult:
    """Multi-tensor LARS gradient rewrite, in place: ``grads[i] ← λ_i·(g_i + wd_i·w_i)`` for every
    ``i`` with ``adapt[i]``; the others are only checked for inf/nan.

    Everything is validated before any tensor is written, and when any gradient is non-finite no
    tensor is written at all (``result.found_inf`` is True). One backend call per device.
    """
    n = len(grads)
    if not (len(weights) == n == len(adapt) == len(weight_decays) == len(lrs)):
        raise ValueError("weights, grads, adapt, weight_decays and lrs must have one length")
    label = (lambda i: f"parameter {names[i]!r}") if names else (lambda i: f"parameter {i}")
    for i in range(n):
        check_pair(weights[i], grads[i], label(i), f"gradient of {label(i)}")
    if n == 0:
        return MultiResult(torch.tensor(False), torch.zeros(0, dtype=torch.float64))
    by_device: dict[torch.device, list[int]] = {}
    for i, g in enumerate(grads):
        by_device.setdefault(g.device, []).append(i)
    backends = {dev: resolve(dev, backend) for dev in by_device}  # raises before any write

    def run(dev: torch.device, idx: list[int]) -> MultiResult:
        try:
            return backends[dev].multi_lars_(
                [weights[i] for i in idx],
                [grads[i] for i in idx],
                [bool(adapt[i]) for i in idx],
                [float(weight_decays[i]) for i in idx],
                [float(lrs[i]) for i in idx],
                hyper,
            )
        except (TensorError, TensorTypeError) as exc:  # a native refusal: name the parameter
            if not names and len(idx) == n:
                raise
            raise renamed(exc, [names[i] if names else str(i) for i in idx]) from None

    with torch.no_grad():
        if len(by_device) == 1:
            return run(*next(iter(by_device.items())))
        # Several devices: check every gradient first, so a non-finite one on any device means no
        # device is written.
        if not all_finite(grads):
            return MultiResult(torch.tensor(True), torch.full((n,), math.nan, dtype=torch.float64))
        lam = torch.ones(n, dtype=torch.float64)
        for dev, idx in by_device.items():
            lam[idx] = run(dev, idx).trust_ratio
        return MultiResult(torch.tensor(False), lam)
