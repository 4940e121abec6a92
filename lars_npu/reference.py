"""NumPy reference of LARS: the spec (docs/semantics.md, "The math") in code.

Every other backend is tested against these functions. They compute in float64 and round the
result to the input's dtype once, so they are the most accurate implementation in the package;
they never import the native module or torch.

Notation: ``w`` weight, ``g`` gradient, ``w_s = Σw²`` and ``g_s = Σg²`` (sums of squares, the
inputs of MindSpore's ``LARSUpdate``), ``wd`` weight decay, ``lr`` learning rate, ``ε`` epsilon,
``θ`` coefficient::

    λ  = θ·√w_s / (√g_s + wd·√w_s + ε)
    if guard_zero_norm and (√w_s == 0 or √g_s == 0):  λ = 1          (before clipping)
    if use_clip:  λ = max(min(λ / lr, 1), 0)      (lr = 0: the limit, 1 if λ > 0 else 0)
    g' = λ · (g + wd·w)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["lars_momentum_step", "lars_update", "square_sum_all", "trust_ratio"]


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def square_sum_all(weight: np.ndarray, gradient: np.ndarray) -> tuple[np.float32, np.float32]:
    """MindSpore ``SquareSumAll``: ``(Σw², Σg²)``, accumulated in float64, returned as float32."""
    w = _f64(weight)
    g = _f64(gradient)
    return np.float32(np.sum(w * w)), np.float32(np.sum(g * g))


def trust_ratio(
    w_s: float,
    g_s: float,
    weight_decay: float,
    learning_rate: float,
    *,
    epsilon: float = 1e-5,
    coefficient: float = 1e-3,
    use_clip: bool = False,
    guard_zero_norm: bool = False,
) -> float:
    """The layer-wise trust ratio λ from the sums of squares ``w_s = Σw²``, ``g_s = Σg²``::

    λ = θ·√w_s / (√g_s + wd·√w_s + ε)
    guard_zero_norm and (√w_s == 0 or √g_s == 0)  →  λ = 1
    use_clip  →  λ = max(min(λ / lr, 1), 0), at lr = 0 its limit: 1 if λ > 0 else 0
    """
    wn = math.sqrt(float(w_s))
    gn = math.sqrt(float(g_s))
    if guard_zero_norm and (wn == 0.0 or gn == 0.0):
        lam = 1.0
    else:
        lam = coefficient * wn / (gn + weight_decay * wn + epsilon)
    if use_clip and not math.isnan(lam):  # nan (from non-finite inputs) stays nan
        if learning_rate > 0.0:
            lam = max(min(lam / learning_rate, 1.0), 0.0)
        else:
            lam = 1.0 if lam > 0.0 else 0.0
    return lam


def lars_update(
    weight: np.ndarray,
    gradient: np.ndarray,
    norm_weight: float,
    norm_gradient: float,
    weight_decay: float,
    learning_rate: float,
    *,
    epsilon: float = 1e-5,
    coefficient: float = 1e-3,
    use_clip: bool = False,
    guard_zero_norm: bool = False,
) -> np.ndarray:
    """MindSpore ``LARSUpdate``: ``g' = λ·(g + wd·w)`` with λ from :func:`trust_ratio`.

    ``norm_weight`` and ``norm_gradient`` are the SUMS OF SQUARES ``Σw²`` and ``Σg²`` (as in
    MindSpore, despite the names). The result has the gradient's dtype.
    """
    g = np.asarray(gradient)
    lam = trust_ratio(
        norm_weight,
        norm_gradient,
        weight_decay,
        learning_rate,
        epsilon=epsilon,
        coefficient=coefficient,
        use_clip=use_clip,
        guard_zero_norm=guard_zero_norm,
    )
    out = np.asarray(lam * (_f64(g) + weight_decay * _f64(weight)))
    return out.astype(g.dtype)


def lars_momentum_step(
    weight: np.ndarray,
    gradient: np.ndarray,
    momentum_buffer: np.ndarray | None,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.0,
    nesterov: bool = False,
    lars: bool = True,
    epsilon: float = 1e-5,
    coefficient: float = 1e-3,
    use_clip: bool = False,
    guard_zero_norm: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, float]:
    """One LARS + momentum-SGD step of one tensor (torch SGD conventions, dampening 0).

    ``lars=False`` is a parameter the filter excludes: ``g' = g`` (no LARS, no weight decay).
    Otherwise ``g' = λ·(g + wd·w)`` with ``w_s = Σw²``, ``g_s = Σg²`` of this step. Then::

        m = g'                 on the first step (momentum_buffer is None), else m = μ·m + g'
        d = g' + μ·m  if nesterov else m          (μ = 0: no buffer, d = g')
        w = w - lr·d

    Returns ``(new_weight, new_momentum_buffer or None, g', λ)``, arrays in the inputs' dtypes.
    """
    w = _f64(weight)
    g = _f64(gradient)
    if lars:
        lam = trust_ratio(
            float(np.sum(w * w)),
            float(np.sum(g * g)),
            weight_decay,
            lr,
            epsilon=epsilon,
            coefficient=coefficient,
            use_clip=use_clip,
            guard_zero_norm=guard_zero_norm,
        )
        gp = lam * (g + weight_decay * w)
    else:
        lam = 1.0
        gp = g
    new_m: np.ndarray | None = None
    if momentum != 0.0:
        new_m = gp.copy() if momentum_buffer is None else momentum * _f64(momentum_buffer) + gp
        d = gp + momentum * new_m if nesterov else new_m
    else:
        d = gp
    new_w = w - lr * d
    dtype = np.asarray(weight).dtype
    return (
        np.asarray(new_w).astype(dtype),
        None if new_m is None else np.asarray(new_m).astype(dtype),
        np.asarray(gp).astype(np.asarray(gradient).dtype),
        lam,
    )
