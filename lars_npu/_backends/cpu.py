"""CPU backend: the C++ kernels of ``lars_npu._C`` on zero-copy views of CPU tensors.

The kernels take raw data pointers of contiguous tensors. A non-contiguous tensor (a view a model
may hold) is given to them as a contiguous copy; a rewritten gradient is copied back afterwards.
Thread count: ``kernel_threads()``, so ``torch.set_num_threads`` governs lars_npu too (one thread
in a forked child: see ``_native.kernel_threads``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._compat import TO_DLPACK
from ._native import constants, kernel_threads, loaded, native, native_error
from ._staging import contig as _contig
from ._staging import ptrs as _ptrs
from ._staging import stage_step, unstage_grads, unstage_step
from .base import Hyper, LayoutMismatch, MultiResult, lambdas_from_sums

if TYPE_CHECKING:
    from .._fused import FusedCall

# Bytes of parameters per cache batch of the fused step; 0: half the last-level cache.
CACHE_BUDGET_BYTES = 0


def _code(dtype: torch.dtype) -> int:
    """The kernels' code of ``dtype`` (defined once in csrc/cpu/dtypes.h; from build_info)."""
    return constants().dtype_codes[dtype]


# One capsule per tensor exposes pointer, shape, strides, dtype and device together (and keeps
# the tensor alive while it exists).
_TO_DLPACK = TO_DLPACK
_STORAGE = torch.Tensor.untyped_storage
_IS_NEG = torch.Tensor.is_neg  # (the conjugate bit exists only on complex tensors: refused)


def _ptr_list(ts: Sequence[torch.Tensor | None]) -> list[int | None]:
    """Raw pointers of staged tensors the caller holds (None: no tensor)."""
    return [None if t is None else t.data_ptr() for t in ts]


def _arrays(
    ws: list[torch.Tensor], gs: list[torch.Tensor]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    w_ptr = np.fromiter((w.data_ptr() for w in ws), dtype=np.int64, count=len(ws))
    g_ptr = np.fromiter((g.data_ptr() for g in gs), dtype=np.int64, count=len(gs))
    numel = np.fromiter((g.numel() for g in gs), dtype=np.int64, count=len(gs))
    dtype = np.fromiter((_code(g.dtype) for g in gs), dtype=np.int64, count=len(gs))
    return w_ptr, g_ptr, numel, dtype


class CpuBackend:
    name = "cpu"
    dtypes: tuple[torch.dtype, ...] | None = None  # every one: fp32, fp16, bf16, fp64

    def available(self) -> tuple[bool, str]:
        return (native() is not None), native_error()

    def supports(self, device: torch.device) -> bool:
        return device.type == "cpu"

    def square_sum_all(
        self, weight: torch.Tensor, gradient: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w, g = _contig(weight), _contig(gradient)
        w_s, g_s = loaded().square_sums(*_arrays([w], [g]), kernel_threads())
        return (
            torch.tensor(w_s[0], dtype=torch.float32),
            torch.tensor(g_s[0], dtype=torch.float32),
        )

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
        C = loaded()
        w, g = _contig(weight), _contig(gradient)
        out = torch.empty_like(g, memory_format=torch.contiguous_format)
        lam = C.trust_ratio(
            w_s,
            g_s,
            weight_decay,
            lr,
            hyper.epsilon,
            hyper.coefficient,
            hyper.use_clip,
            hyper.guard_zero_norm,
        )
        w_ptr, g_ptr, numel, dtype = _arrays([w], [g])
        o_ptr = np.array([out.data_ptr()], dtype=np.int64)
        C.lars_rewrite(
            w_ptr,
            g_ptr,
            o_ptr,
            numel,
            dtype,
            np.array([lam]),
            np.array([weight_decay]),
            kernel_threads(),
        )
        return out

    def multi_lars_(
        self,
        weights: list[torch.Tensor],
        grads: list[torch.Tensor],
        adapt: list[bool],
        weight_decays: list[float],
        lrs: list[float],
        hyper: Hyper,
    ) -> MultiResult:
        ws = [_contig(w) for w in weights]
        gs = [_contig(g) for g in grads]
        found_inf, lam, _, _ = loaded().multi_lars(
            *_arrays(ws, gs),
            np.fromiter(adapt, dtype=np.uint8, count=len(adapt)),
            np.asarray(weight_decays, dtype=np.float64),
            np.asarray(lrs, dtype=np.float64),
            hyper.epsilon,
            hyper.coefficient,
            hyper.use_clip,
            hyper.guard_zero_norm,
            kernel_threads(),
        )
        if not found_inf:
            unstage_grads(grads, gs, adapt)
        return MultiResult(torch.tensor(bool(found_inf)), torch.from_numpy(lam))

    # The zero-copy fused step checks every tensor natively against its cached plan (see
    # _fused.py): the driver may skip its own named checks until this raises LayoutMismatch.
    verifies_layout = True

    def fused_sgd_(self, call: FusedCall) -> MultiResult:
        C = loaded()
        h = call.hyper
        if not call.checked:  # zero copy: capsules and storages made now, proven by _C
            ps, gs, bs = call.params, call.grads, call.bufs
            try:
                # DLPack does not carry torch's negative bit (a capsule of x._neg_view()
                # describes x's memory, unnegated): such tensors take the staged path, which
                # resolves them
                if (
                    any(map(_IS_NEG, gs))
                    or any(map(_IS_NEG, ps))
                    or any(b is not None and b.is_neg() for b in bs)
                ):
                    raise LayoutMismatch("a tensor has the negative bit set")
                plan = call.cache.get("cpu_plan")
                if plan is None:  # the plan expects gradients of the parameters' dtype unless
                    # a direct caller opted into mixed dtypes
                    expect = gs if call.mixed_grad_dtypes else ps
                    plan = call.cache["cpu_plan"] = self._plan(C, ps, expect, call)
                found, lam, _, _ = plan.step(
                    list(map(_TO_DLPACK, ps)), list(map(_TO_DLPACK, gs)),
                    [None if b is None else _TO_DLPACK(b) for b in bs],
                    call.first, call.wd, call.lr, call.mu, call.nesterov,
                    h.epsilon, h.coefficient, h.use_clip, h.guard_zero_norm, kernel_threads(),
                    list(map(_STORAGE, ps)), list(map(_STORAGE, gs)),
                    [None if b is None else _STORAGE(b) for b in bs],
                )  # fmt: skip
            except (
                C.LayoutError, RuntimeError, TypeError, AttributeError, KeyError, BufferError
            ) as exc:  # fmt: skip
                # a tensor that no longer fits the plan, cannot be exported, or has a dtype the
                # kernels do not take (KeyError: no code): nothing was written; the driver's
                # named checks say which, and the plan is rebuilt from the tensors as they are
                call.cache.pop("cpu_plan", None)
                raise LayoutMismatch(str(exc)) from exc
            return MultiResult(torch.tensor(bool(found)), torch.from_numpy(lam))
        # checked by the driver: views or buffers of another dtype as staged copies that this
        # function holds, written back after success
        ws, gs, ms = stage_step(call)
        plan = self._plan(C, ws, gs, call)
        found, lam, _, _ = plan.step(
            _ptr_list(ws), _ptr_list(gs), _ptr_list(ms), call.first, call.wd, call.lr, call.mu,
            call.nesterov, h.epsilon, h.coefficient, h.use_clip, h.guard_zero_norm,
            kernel_threads(),
        )  # fmt: skip
        if not found:
            unstage_step(call, ws, ms)
        return MultiResult(torch.tensor(bool(found)), torch.from_numpy(lam))

    @staticmethod
    def _plan(C, ws, gs, call: FusedCall):
        n = len(ws)
        return C.FusedPlan(
            [tuple(w.shape) for w in ws],
            np.fromiter((_code(w.dtype) for w in ws), dtype=np.int64, count=n),
            np.fromiter((_code(g.dtype) for g in gs), dtype=np.int64, count=n),
            call.adapt,
            call.has_m,
            CACHE_BUDGET_BYTES,
        )

    # -- the sharded step's pieces: one native call each for every tensor --
    def square_sums(
        self, weights: list[torch.Tensor], grads: list[torch.Tensor], adapt: list[bool]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One native call (fp64 accumulation) for every tensor's Σw² (adapted ones) and Σg²."""
        wc = [_contig(w) if a else None for w, a in zip(weights, adapt, strict=True)]
        gc = [_contig(g) for g in grads]
        w_s, g_s = loaded().square_sums(
            _ptrs(wc),
            _ptrs(gc),
            np.fromiter((g.numel() for g in gc), dtype=np.int64, count=len(gc)),
            np.fromiter((_code(g.dtype) for g in gc), dtype=np.int64, count=len(gc)),
            kernel_threads(),
        )
        return torch.from_numpy(np.asarray(w_s)), torch.from_numpy(np.asarray(g_s))

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
        """λ per tensor on the host (the reference's formula), then one native rewrite of every
        gradient in place (staged copies of non-contiguous ones written back)."""
        lam = lambdas_from_sums(w_s, g_s, weight_decays, lrs, hyper)
        todo = [i for i, g in enumerate(grads) if g.numel() > 0]
        if todo:
            wc = [_contig(weights[i]) for i in todo]
            gc = [_contig(grads[i]) for i in todo]
            g_ptr = _ptrs(gc)
            loaded().lars_rewrite(
                _ptrs(wc),
                g_ptr,
                g_ptr,  # in place
                np.fromiter((g.numel() for g in gc), dtype=np.int64, count=len(gc)),
                np.fromiter((_code(g.dtype) for g in gc), dtype=np.int64, count=len(gc)),
                lam[todo],
                np.asarray([weight_decays[i] for i in todo], dtype=np.float64),
                kernel_threads(),
            )
            unstage_grads([grads[i] for i in todo], gc)
        return lam
