"""CPU backend: the operators ``torch.ops.lars_npu.*`` that ``lars_npu._C`` registers
(csrc/ops/ops.cpp), running the fused C++ kernels of csrc/cpu on CPU tensors.

The operators check every tensor natively before they write anything and stage what the kernels
cannot take as it is (views, the negative bit, a buffer of another dtype) as contiguous copies,
written back after the step; a refusal is a :class:`lars_npu.TensorError` naming the parameter.
Thread count: ``torch.get_num_threads()`` (one thread in a forked child: see
``_native.kernel_threads``).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._ops import flags_of, group_table, named
from ._native import kernel_threads, native, native_error
from .base import Hyper, MultiResult

if TYPE_CHECKING:
    from .._fused import FusedCall


# Bytes of parameters per cache batch of the fused step; 0: half the last-level cache.
CACHE_BUDGET_BYTES = 0


def _named_call(op: Any, names: Sequence[str] | None, *args: Any) -> Any:
    """``op(*args)``, its per-tensor refusals raised as TensorError naming the parameter."""
    try:
        return op(*args)
    except (ValueError, TypeError) as exc:
        err = named(exc, names)
        if err is None:
            raise
        raise err from None


def _ops() -> Any:
    kernel_threads()  # (says once, in a forked child, that the kernels run on one thread)
    return torch.ops.lars_npu


def _flags(adapt: list[bool] | np.ndarray) -> torch.Tensor:
    a = np.asarray(adapt, dtype=np.uint8)
    z = np.zeros_like(a)
    return flags_of(a, z, z)


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
        w_s, g_s = _named_call(_ops().square_sums, ["weight"], [weight], [gradient], _flags([True]))
        return w_s[0].to(torch.float32), g_s[0].to(torch.float32)

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
        if not (np.isfinite(w_s) and np.isfinite(g_s)):
            # the operator skips a step whose sums are not finite; the functional LARSUpdate
            # computes whatever λ they give (the reference's arithmetic, in torch ops)
            from .torch_ import TorchBackend

            return TorchBackend().lars_update(weight, gradient, w_s, g_s, weight_decay, lr, hyper)
        # the copy reads the gradient: its storage is checked before (the operator checks the
        # weight, and the copy)
        from .._checks import check_storage  # (imports lars_npu.functional, which imports us)

        check_storage(gradient, "gradient")
        out = gradient.clone(memory_format=torch.contiguous_format)
        _named_call(
            _ops().lars_, ["weight"], [weight], [out], torch.zeros(1, dtype=torch.int64),
            _flags([True]), group_table([lr], [weight_decay], [0.0], [False]),
            hyper.epsilon, hyper.coefficient, hyper.use_clip, hyper.guard_zero_norm,
            torch.tensor([[w_s], [g_s]], dtype=torch.float64),
        )  # fmt: skip
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
        n = len(grads)
        found, lam, _, _ = _named_call(
            _ops().lars_, None, weights, grads, torch.arange(n, dtype=torch.int64),
            _flags(adapt), group_table(lrs, weight_decays, [0.0] * n, [False] * n),
            hyper.epsilon, hyper.coefficient, hyper.use_clip, hyper.guard_zero_norm, None,
        )  # fmt: skip
        return MultiResult(found, lam)

    # The operator checks every tensor natively (csrc/ops/checks.h): the fused driver keeps no
    # per-tensor checks of its own for this backend.
    verifies_layout = True
    # fused_sgd_ takes FusedCall.given (the sharded step's all-reduced sums)
    takes_given_sums = True

    def fused_sgd_(self, call: FusedCall) -> MultiResult:
        h = call.hyper
        group, table = call.op_groups()
        found, lam, _, _ = _named_call(
            _ops().fused_step_, call.names, call.params, call.grads,
            list(compress(call.bufs, call.has_m)), group,
            flags_of(call.adapt, call.has_m, call.first), table,
            h.epsilon, h.coefficient, h.use_clip, h.guard_zero_norm,
            None if call.given is None else call.given.contiguous(),
            call.mixed_grad_dtypes, CACHE_BUDGET_BYTES,
        )  # fmt: skip
        return MultiResult(found, lam)

    # -- the sharded step's pieces: one operator call each for every tensor --
    def square_sums(
        self, weights: list[torch.Tensor], grads: list[torch.Tensor], adapt: list[bool]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One operator call (fp64 accumulation) for every tensor's Σw² (adapted ones) and
        Σg²."""
        w_s, g_s = _named_call(_ops().square_sums, None, weights, grads, _flags(adapt))
        return w_s, g_s

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
        """λ per tensor from the given sums and the rewrite of every gradient in place, in one
        operator call (λ by csrc/common/lars_math.h, the reference's formula)."""
        n = len(grads)
        sums = [np.asarray(w_s, np.float64), np.asarray(g_s, np.float64)]
        given = torch.from_numpy(np.stack(sums))
        _, lam, _, _ = _named_call(
            _ops().lars_, None, weights, grads, torch.arange(n, dtype=torch.int64),
            _flags([True] * n), group_table(lrs, weight_decays, [0.0] * n, [False] * n),
            hyper.epsilon, hyper.coefficient, hyper.use_clip, hyper.guard_zero_norm,
            given.contiguous(),
        )  # fmt: skip
        return lam.numpy()
