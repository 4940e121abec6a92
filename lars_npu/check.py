"""Compare backends with the NumPy reference: tolerances, one comparison, the check matrix.

Used by ``lars-npu check`` and by the tests, so both judge with the same numbers. Per case and
backend it compares four operations with the reference: ``square_sum_all``, ``lars_update``, the
multi-tensor rewrite ``lars_`` and the fused LARS + momentum-SGD step (through ``LARS(SGD)`` with
``fused=True``: a first step that creates the momentum buffer, then one that uses it).

Tolerances (relative to the size of the terms, not of the result, because ``g + wd·w`` may
cancel): a backend computes ``λ·(g + wd·w)`` in fp32 (fp64 for fp64 tensors) from norms accumulated
in at least fp32, then rounds once to the tensor's dtype. The error per element is then bounded by a
few units of the dtype's rounding (eps/2) times ``λ·(|g| + wd·|w|)``, plus the relative error of λ,
which for an fp32-accumulated norm (the torch backend) is ~log2(n)·eps32. Hence ``rtol``:
fp64 1e-12, fp32 1e-5, fp16 2·eps16 ≈ 2e-3, bf16 2·eps_bf16 ≈ 1.6e-2. The fused step is judged
the same way against the size of its terms: ``μ·|m| + λ·(|g| + wd·|w|)`` for the new momentum and
``|w| + lr·(|m_new| + that)`` for the new weight (the buffer is stored in the parameter's dtype).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from . import reference
from ._backends import Hyper, get_backend
from .functional import lars_
from .optim import LARS

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
    ``scale`` is the elementwise size of the terms (e.g. ``λ·(|g| + wd·|w|)``).

    ``max_rel`` is the error relative to that size, ``|got - ref| / (scale + tiny/tol)``: the
    quantity ``tol`` bounds, so a comparison passes exactly when ``max_rel <= tol`` (relative to
    the result itself it would be unbounded where ``g + wd·w`` cancels)."""
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
    rel = err / (np.asarray(scale, dtype=np.float64)[fin] + tiny / tol)
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

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

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
        # use_clip at lr = 0 (warm-up's first step) on a zero weight: λ = 0, so g' must be 0
        yield Case((5, 3), dt, 1e-4, 0.0, True, False, "zero_weight")


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
    dtype: str = ""


def _row(backend: str, op: str, case: Case, c: Comparison, tol: float | None = None) -> Row:
    """A row of the check; ``tol``: the tolerance used, when it is not the dtype's rtol."""
    tol = rtol(case.dtype) if tol is None else tol
    return Row(backend, op, case.label(), c.max_abs, c.max_rel, tol, c.ok, case.dtype_name)


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
    sum_tol = max(tol, 1e-6)  # the sums are returned in fp32
    c = compare(
        np.array([got_ws.item(), got_gs.item()]),
        np.array([ref_ws, ref_gs], dtype=np.float32).astype(np.float64),
        np.array([ref_ws, ref_gs]),
        sum_tol,
    )
    rows.append(_row(backend, "square_sum_all", case, c, sum_tol))

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
    rows.append(_row(backend, "lars_update", case, c))

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
    c.ok = c.ok and not bool(res.found_inf)
    rows.append(_row(backend, "lars_ (multi)", case, c))
    return rows


def _adapt_all(info: object) -> bool:
    return True


def check_fused(backend: str, case: Case, device: torch.device) -> Row:
    """The fused LARS + momentum-SGD step (``LARS(SGD(momentum=0.9), fused=True)``) against
    :func:`reference.lars_momentum_step`: two steps, each compared from the state it started in."""
    mu = 0.9
    w, g = make_inputs(case)
    p = torch.nn.Parameter(w.to(device))
    sgd = torch.optim.SGD([("w", p)], lr=case.lr, momentum=mu, weight_decay=case.weight_decay)
    opt = LARS(
        sgd,
        use_clip=case.use_clip,
        lars_filter=_adapt_all,
        guard_zero_norm=case.guard_zero_norm,
        backend=backend,
        fused=True,
    )
    tol = rtol(case.dtype)
    worst = Comparison(0.0, 0.0, True)
    gen = torch.Generator().manual_seed(1)
    for step in range(2):
        grad = g  # the second step: a fresh gradient (zero for the zero_grad case)
        if step == 1:
            grad = (torch.randn(g.shape, generator=gen, dtype=torch.float64) * 0.01).to(case.dtype)
            if case.edge == "zero_grad":
                grad.zero_()
        p.grad = grad.to(device)
        w0 = np64(p)
        buf = sgd.state[p].get("momentum_buffer")
        m0 = None if buf is None else np64(buf)
        w_ref, m_ref, _, lam = reference.lars_momentum_step(
            w0,
            np64(p.grad),
            m0,
            lr=case.lr,
            weight_decay=case.weight_decay,
            momentum=mu,
            use_clip=case.use_clip,
            guard_zero_norm=case.guard_zero_norm,
        )
        opt.step()
        if m_ref is None:  # momentum 0.9 always keeps a buffer
            raise AssertionError("the reference kept no momentum buffer")
        scale_m = abs(lam) * (np.abs(np64(p.grad)) + case.weight_decay * np.abs(w0))
        if m0 is not None:
            scale_m = scale_m + mu * np.abs(m0)
        scale_w = np.abs(w0) + case.lr * (np.abs(m_ref) + scale_m)
        found = bool(opt.found_inf)
        for got, ref, scale in (
            (np64(sgd.state[p]["momentum_buffer"]), m_ref, scale_m),
            (np64(p), w_ref, scale_w),
        ):
            c = compare(got, ref, scale, tol, atol(case.dtype))
            worst = Comparison(
                max(worst.max_abs, c.max_abs),
                max(worst.max_rel, c.max_rel),
                worst.ok and c.ok and not found,
            )
    return _row(backend, "fused step", case, worst)


def device_for(backend: str) -> torch.device:
    """Where the check puts the tensors for ``backend``: the CPU when it takes CPU tensors (every
    host backend), else the accelerator it serves (``npu``: the current NPU)."""
    b = get_backend(backend)
    if b.supports(torch.device("cpu")):
        return torch.device("cpu")
    for dev in ("npu",):  # the one accelerator a backend here serves
        try:
            d = torch.device(dev)
        except RuntimeError:
            continue
        if b.supports(d):
            return d
    raise ValueError(f"lars_npu backend {backend!r} takes no device this check knows")


def jobs(
    backends: list[str], quick: bool = False, dtypes: list[torch.dtype] | None = None
) -> list[tuple[str, Case]]:
    """The (backend, case) pairs of a check: every case in a dtype the backend takes."""
    out = []
    for name in backends:
        supported = get_backend(name).dtypes  # None: every dtype
        out += [
            (name, c) for c in cases(quick, dtypes) if supported is None or c.dtype in supported
        ]
    return out


def run_check(
    backends: list[str],
    quick: bool = False,
    dtypes: list[torch.dtype] | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[Row]:
    """Every row of the check; ``progress(1)`` after each case."""
    rows: list[Row] = []
    devices = {name: device_for(name) for name in backends}
    for name, case in jobs(backends, quick, dtypes):
        rows.extend(check_case(name, case, devices[name]))
        rows.append(check_fused(name, case, devices[name]))
        if progress is not None:
            progress(1)
    return rows


@dataclass
class Group:
    """The rows of one backend × op × dtype: how many, how many failed, the worst errors."""

    backend: str
    op: str
    dtype: str
    rows: int = 0
    failed: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    rtol: float = 0.0


def summarize_rows(rows: list[Row]) -> list[Group]:
    """One :class:`Group` per backend × op × dtype, in first-seen order."""
    groups: dict[tuple[str, str, str], Group] = {}
    for r in rows:
        g = groups.setdefault((r.backend, r.op, r.dtype), Group(r.backend, r.op, r.dtype))
        g.rows += 1
        g.failed += not r.ok
        g.max_abs = max(g.max_abs, r.max_abs)
        g.max_rel = max(g.max_rel, r.max_rel)
        g.rtol = max(g.rtol, r.rtol)
    return list(groups.values())


def rows_as_dicts(rows: list[Row] | list[Group]) -> list[dict[str, object]]:
    return [asdict(r) for r in rows]


# -- ``lars-npu check`` ----------------------------------------------------------------------------
