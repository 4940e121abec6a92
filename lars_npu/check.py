"""Compare backends with the NumPy reference: tolerances, one comparison, the check matrix.

Used by ``lars-npu check`` and by the tests, so both judge with the same numbers.

Tolerances (relative to the size of the terms, not of the result, because ``g + wd·w`` may
cancel): a backend computes ``λ·(g + wd·w)`` in fp32 (fp64 for fp64 tensors) from norms accumulated
in at least fp32, then rounds once to the tensor's dtype. The error per element is then bounded by a
few units of the dtype's rounding (eps/2) times ``λ·(|g| + wd·|w|)``, plus the relative error of λ,
which for an fp32-accumulated norm (the torch backend) is ~log2(n)·eps32. Hence ``rtol``:
fp64 1e-12, fp32 1e-5, fp16 2·eps16 ≈ 2e-3, bf16 2·eps_bf16 ≈ 1.6e-2.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from . import reference
from ._backends import Hyper, get_backend
from .functional import lars_

RTOL: dict[torch.dtype, float] = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}


def rtol(dtype: torch.dtype) -> float:
    return RTOL[dtype]


def atol(dtype: torch.dtype) -> float:
    """The absolute floor: one step of the dtype's subnormals (2^-24 for fp16), where a rounded
    result's relative error is unbounded."""
    fi = torch.finfo(dtype)
    return float(fi.smallest_normal * fi.eps)


def np64(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as float64 NumPy (exact for every supported dtype)."""
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


@dataclass
class Comparison:
    max_abs: float
    max_rel: float
    ok: bool


def compare(
    got: np.ndarray, ref: np.ndarray, scale: np.ndarray, tol: float, tiny: float = 1e-300
) -> Comparison:
    """``ok`` iff ``|got - ref| <= tol·scale + tiny`` everywhere (and non-finite values agree);
    ``scale`` is the elementwise size of the terms (e.g. ``λ·(|g| + wd·|w|)``)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return Comparison(math.inf, math.inf, False)
    if got.size == 0:
        return Comparison(0.0, 0.0, True)
    fin = np.isfinite(ref)
    if not np.array_equal(np.isfinite(got), fin) or not np.array_equal(
        got[~fin], ref[~fin], equal_nan=True
    ):
        return Comparison(math.inf, math.inf, False)
    err = np.abs(got[fin] - ref[fin])
    bound = tol * np.asarray(scale, dtype=np.float64)[fin] + tiny
    rel = err / np.maximum(np.abs(ref[fin]), max(tiny, 1e-300))
    return Comparison(
        float(err.max(initial=0.0)), float(rel.max(initial=0.0)), bool(np.all(err <= bound))
    )


@dataclass
class Case:
    """One row of the check matrix."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    weight_decay: float
    lr: float
    use_clip: bool
    guard_zero_norm: bool
    edge: str  # "", "zero_weight", "zero_grad"

    def label(self) -> str:
        h = f"wd={self.weight_decay:g} lr={self.lr:g}"
        h += " clip" if self.use_clip else ""
        h += " guard" if self.guard_zero_norm else ""
        h += f" {self.edge}" if self.edge else ""
        return f"{self.shape!s:<12} {str(self.dtype).replace('torch.', ''):<9} {h}"


def cases(quick: bool = False, dtypes: list[torch.dtype] | None = None) -> Iterator[Case]:
    """The check matrix: shapes × dtypes × hyper-parameters × zero-norm edge cases."""
    shapes: list[tuple[int, ...]] = [(), (1,), (7,), (3, 5), (33, 17)]
    if not quick:
        shapes += [(1000,), (257, 129), (4, 3, 3, 3), (1 << 17,)]
    dts = dtypes or [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    hypers = [
        (0.0, 1.0, False, False),
        (5e-4, 0.1, False, False),
        (5e-4, 0.1, True, False),
        (1e-4, 0.0, True, False),
        (1e-4, 0.5, False, True),
    ]
    for shape, dt, (wd, lr, clip, guard) in itertools.product(shapes, dts, hypers):
        yield Case(shape, dt, wd, lr, clip, guard, "")
    for dt in dts:
        for edge, guard in itertools.product(("zero_weight", "zero_grad"), (False, True)):
            yield Case((5, 3), dt, 1e-4, 0.1, False, guard, edge)


def make_inputs(case: Case, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(case.shape, generator=gen, dtype=torch.float64).to(case.dtype)
    g = (torch.randn(case.shape, generator=gen, dtype=torch.float64) * 0.01).to(case.dtype)
    if case.edge == "zero_weight":
        w.zero_()
    if case.edge == "zero_grad":
        g.zero_()
    return w, g


@dataclass
class Row:
    backend: str
    op: str
    case: str
    max_abs: float
    max_rel: float
    rtol: float
    ok: bool


def check_case(backend: str, case: Case, device: torch.device) -> list[Row]:
    """Compare square_sum_all, lars_update and the multi-tensor lars_ of ``backend`` with the
    reference on one case."""
    b = get_backend(backend)
    hyper = Hyper(1e-5, 1e-3, case.use_clip, case.guard_zero_norm)
    w, g = make_inputs(case)
    w, g = w.to(device), g.to(device)
    wn, gn = np64(w), np64(g)
    tol = rtol(case.dtype)
    rows = []

    ref_ws, ref_gs = float(np.sum(wn * wn)), float(np.sum(gn * gn))
    got_ws, got_gs = b.square_sum_all(w, g)
    c = compare(
        np.array([got_ws.item(), got_gs.item()]),
        np.array([ref_ws, ref_gs], dtype=np.float32).astype(np.float64),
        np.array([ref_ws, ref_gs]),
        max(tol, 1e-6),  # the sums are returned in fp32
    )
    rows.append(Row(backend, "square_sum_all", case.label(), c.max_abs, c.max_rel, tol, c.ok))

    lam = reference.trust_ratio(
        ref_ws,
        ref_gs,
        case.weight_decay,
        case.lr,
        epsilon=hyper.epsilon,
        coefficient=hyper.coefficient,
        use_clip=hyper.use_clip,
        guard_zero_norm=hyper.guard_zero_norm,
    )
    ref = reference.lars_update(
        wn,
        gn,
        ref_ws,
        ref_gs,
        case.weight_decay,
        case.lr,
        epsilon=hyper.epsilon,
        coefficient=hyper.coefficient,
        use_clip=hyper.use_clip,
        guard_zero_norm=hyper.guard_zero_norm,
    )
    scale = abs(lam) * (np.abs(gn) + case.weight_decay * np.abs(wn))
    with torch.no_grad():
        out = b.lars_update(w, g, ref_ws, ref_gs, case.weight_decay, case.lr, hyper)
    c = compare(np64(out), ref, scale, tol, atol(case.dtype))
    rows.append(Row(backend, "lars_update", case.label(), c.max_abs, c.max_rel, tol, c.ok))

    g2 = g.clone()
    res = lars_(
        [w],
        [g2],
        adapt=[True],
        weight_decays=[case.weight_decay],
        lrs=[case.lr],
        hyper=hyper,
        backend=backend,
    )
    c = compare(np64(g2), ref, scale, tol, atol(case.dtype))
    ok = c.ok and not bool(res.found_inf)
    rows.append(Row(backend, "lars_ (multi)", case.label(), c.max_abs, c.max_rel, tol, ok))
    return rows


def run_check(
    backends: list[str], quick: bool = False, dtypes: list[torch.dtype] | None = None
) -> list[Row]:
    rows: list[Row] = []
    for name in backends:
        device = torch.device("cpu")
        supported = getattr(get_backend(name), "dtypes", None)  # None: every dtype
        for case in cases(quick, dtypes):
            if supported is None or case.dtype in supported:
                rows.extend(check_case(name, case, device))
    return rows


def rows_as_dicts(rows: list[Row]) -> list[dict[str, object]]:
    return [asdict(r) for r in rows]
