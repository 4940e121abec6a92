"""What the two backends of the AscendC kernels share: ``npu`` (the kernels on an Ascend NPU, on
torch_npu's current stream) and ``emu`` (the same kernels on lars_npu's host emulation).

One step, whatever runs the kernels:

1. ``_C.ascend_plan`` takes the step as one struct (``_C.AscendStep``, ``step_args``) and builds
   the whole workspace on the host as one byte array (address tables of the tensors, the flat work
   list, per-tensor parameters, tiling structs, room for the results: partials, the cores'
   non-finite flags, λ; csrc/ascendc/lars_host_plan.h), with the addresses the kernels will read;
   every tensor contiguous with its base 32-byte aligned (``aligned`` stages the others);
2. ``_launch`` (the only part that differs) runs the square-sums, λ and update kernels on it: the
   emulation works on the array in place; the NPU backend copies it to the device and launches on
   the stream, and nothing waits;
3. the outcome: for the optimizer's calls (``multi_lars_``, ``fused_sgd_``), found_inf and λ as
   tensors computed where the workspace is (``_lazy_outcome``: the cores' flags, the λ table the
   kernels wrote), read when someone asks; for calls that need the sums on the host (square
   sums, given-sum rewrites), ``_C.ascend_read_back`` on the results copied back.

Lists mixing fp32 and fp16 run as one launch set per dtype group.

So the ``npu`` backend's Python code is the ``emu`` backend's, tested in every CI run, plus the
device copies and the launch on the stream. The device copy of the workspace is kept between steps
and only what differs from it is sent (csrc/npu/lars_resident.h; ``workspace_upload`` says what).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._ascend_launch import (
    AscendLauncher,
    aligned,
    dtype_code,
    dtype_groups,
    fp32_inputs,
    fp32_per_tensor,
    kernel_codes,
    kernel_dtypes_ok,
    kernel_pairs_ok,
    step_args,
)
from ._native import loaded
from ._staging import stage_step, unstage_grads, unstage_step
from .base import Hyper, MultiResult, per_tensor_rewrite_given_sums_, per_tensor_square_sums

if TYPE_CHECKING:
    from .._fused import FusedCall

__all__ = [
    "AscendKernelBackend",
    "aligned",
    "dtype_code",
    "kernel_codes",
    "kernel_dtypes_ok",
    "kernel_pairs_ok",
    "step_args",
    "workspace_upload",
]


def workspace_upload(
    layout: dict[str, int],
    previous: np.ndarray | None,
    current: np.ndarray,
    *,
    run_square_sums: bool = True,
    run_update: bool = True,
) -> dict[str, Any]:
    """What one launch sends host-to-device with the workspace kept resident on the device
    (csrc/npu/lars_resident.h, the rules of the NPU backend, the NPU operators and the staging
    runner): ``current`` is this launch's workspace (``_C.ascend_plan``), ``previous`` the one the
    device buffer holds from the last launch of this layout (None: a new buffer). Returns
    ``{"bytes", "zeroed", "copies", "compared", "full", "zero_by_copy", "regions", "ranges"}``:
    bytes copied host-to-device, bytes zeroed on the device (the cores' flags, no host data),
    separate copies and zeroings, bytes compared on the host, whether nothing was known, bytes
    sent per region (addresses, chunks, tensor_chunks, tiling, params, hyper, partials, flags,
    lambda), and the ranges ``(offset, bytes, zero)``."""
    out: dict[str, Any] = loaded().workspace_upload(
        layout["n"],
        layout["num_chunks"],
        previous,
        current,
        run_square_sums=run_square_sums,
        run_update=run_update,
    )
    return out


class AscendKernelBackend(AscendLauncher):
    """The backend operations on the AscendC kernels; subclasses provide ``_launch``."""

    name = "ascend"
    dtypes: tuple[torch.dtype, ...] | None = (torch.float32, torch.float16)  # the kernels'
    verifies_layout = False  # every fused step stages and checks its tensors

    # -- the backend protocol (base.Backend) --
    def square_sum_all(
        self, weight: torch.Tensor, gradient: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w, g = aligned(weight), aligned(gradient)
        _, _, w_s, g_s = self._run(
            [w], [g], [None], adapt=[True], first=[False], nesterov=[False], wd=[0.0], lr=[0.0],
            mu=[0.0], hyper=Hyper(), mode=0, run_update=False,
        )  # fmt: skip
        dev = weight.device
        return (
            torch.tensor(float(w_s[0]), dtype=torch.float32, device=dev),
            torch.tensor(float(g_s[0]), dtype=torch.float32, device=dev),
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
        # The kernels take the given sums and hyper-parameters in fp32: refuse what fp32 cannot
        # hold (an overflow would read as a non-finite gradient and skip the rewrite).
        fp32_inputs(
            norm_weight=w_s, norm_gradient=g_s, weight_decay=weight_decay, learning_rate=lr,
            epsilon=hyper.epsilon, coefficient=hyper.coefficient,
        )  # fmt: skip
        w = aligned(weight)
        out = gradient.clone(memory_format=torch.contiguous_format)  # a fresh, aligned tensor
        self._run(
            [w], [out], [None], adapt=[True], first=[False], nesterov=[False],
            wd=[weight_decay], lr=[lr], mu=[0.0], hyper=hyper, mode=0,
            given=(np.array([w_s]), np.array([g_s])),
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
        # the kernels take these in fp32: out of its range they would become inf or 0 there
        fp32_per_tensor(weight_decays=weight_decays, lrs=lrs)
        fp32_inputs(epsilon=hyper.epsilon, coefficient=hyper.coefficient)
        groups = dtype_groups(weights, grads, self.name)
        if len(groups) > 1:
            return self._multi_lars_grouped(
                weights, grads, adapt, weight_decays, lrs, hyper, groups
            )
        ws = [aligned(w) for w in weights]
        gs = [aligned(g) for g in grads]
        device = grads[0].device if grads else torch.device("cpu")
        found, lam = self._run_lazy(
            ws, gs, [None] * n, device, adapt=adapt, first=[False] * n, nesterov=[False] * n,
            wd=weight_decays, lr=lrs, mu=[0.0] * n, hyper=hyper, mode=0,
        )  # fmt: skip
        # Staged copies (views, misaligned tensors) go back only when the step ran: the one case
        # that waits for the kernels here.
        if any(c is not g for c, g in zip(gs, grads, strict=True)) and not bool(found):
            unstage_grads(grads, gs, adapt)
        return MultiResult(found, lam)

    def fused_sgd_(self, call: FusedCall) -> MultiResult:
        fp32_per_tensor(weight_decay=call.wd, lr=call.lr, momentum=call.mu)
        fp32_inputs(epsilon=call.hyper.epsilon, coefficient=call.hyper.coefficient)
        ws, gs, ms = stage_step(call)  # buffers in the parameter's dtype, like the CPU path
        ws = [aligned(w) for w in ws]  # unstage_step copies back whatever is a copy
        # the kernels read g in the parameter's dtype (callers that allow other gradient dtypes)
        gs = [
            aligned(g if g.dtype == w.dtype else g.to(w.dtype)) for g, w in zip(gs, ws, strict=True)
        ]
        ms = [None if m is None else aligned(m) for m in ms]
        groups = dtype_groups(ws, gs, self.name)
        if len(groups) > 1:
            return self._fused_grouped(call, ws, gs, ms, groups)
        device = call.grads[0].device if call.grads else torch.device("cpu")
        found, lam = self._run_lazy(
            ws, gs, ms, device, adapt=call.adapt, first=call.first, nesterov=call.nesterov,
            wd=call.wd, lr=call.lr, mu=call.mu, hyper=call.hyper, mode=1,
        )  # fmt: skip
        staged = any(
            w.data_ptr() != p.data_ptr() or w.stride() != p.stride()
            for w, p in zip(ws, call.params, strict=True)
        ) or any(m is not b for m, b in zip(ms, call.bufs, strict=True) if m is not None)
        if staged and not bool(found):  # copies back only when the step ran (a wait, rare)
            unstage_step(call, ws, ms)
        return MultiResult(found, lam)

    # -- mixed fp32 / fp16 lists: one launch pair per dtype group, as apex groups per dtype --
    def _sums_of_groups(
        self, ws: list[torch.Tensor], gs: list[torch.Tensor], adapt: Any, groups: list[list[int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Σw², Σg² of every tensor: one square-sums launch per group (read back: the decision
        whether any group may write needs every group's sums, so mixed lists wait here)."""
        w_s, g_s = np.zeros(len(gs)), np.zeros(len(gs))
        for idx in groups:
            sums = self._square_sums_launch(
                [ws[i] for i in idx], [gs[i] for i in idx], [adapt[i] for i in idx]
            )
            assert sums is not None  # one dtype per group
            w_s[idx], g_s[idx] = sums
        return w_s, g_s

    def _multi_lars_grouped(
        self, weights, grads, adapt, weight_decays, lrs, hyper, groups
    ) -> MultiResult:
        device = grads[0].device
        w_s, g_s = self._sums_of_groups(weights, grads, adapt, groups)
        if not np.isfinite(g_s).all():  # no group writes anything
            return MultiResult(
                torch.tensor(True, device=device),
                torch.full((len(grads),), float("nan"), dtype=torch.float64),
            )
        lam = np.ones(len(grads))
        for idx in groups:  # the update kernel per group, with the sums as given
            res = self._rewrite_launch(
                [weights[i] for i in idx], [grads[i] for i in idx], [adapt[i] for i in idx],
                w_s[idx], g_s[idx], [weight_decays[i] for i in idx], [lrs[i] for i in idx],
                hyper,
            )  # fmt: skip
            assert res is not None and not res[0]
            lam[idx] = res[1]
        return MultiResult(torch.tensor(False, device=device), torch.from_numpy(lam))

    def _fused_grouped(self, call: FusedCall, ws, gs, ms, groups) -> MultiResult:
        device = call.grads[0].device
        w_s, g_s = self._sums_of_groups(ws, gs, call.adapt, groups)
        if not np.isfinite(g_s).all():
            return MultiResult(
                torch.tensor(True, device=device),
                torch.full((len(ws),), float("nan"), dtype=torch.float64),
            )
        fp32_per_tensor(norm_weight=w_s, norm_gradient=g_s)
        lam = np.ones(len(ws))
        for idx in groups:
            pick = lambda xs, idx=idx: [xs[i] for i in idx]  # noqa: E731
            found, lam_g, _, _ = self._run(
                pick(ws), pick(gs), pick(ms), adapt=pick(call.adapt), first=pick(call.first),
                nesterov=pick(call.nesterov), wd=pick(call.wd), lr=pick(call.lr),
                mu=pick(call.mu), hyper=call.hyper, mode=1, given=(w_s[idx], g_s[idx]),
            )  # fmt: skip
            assert not found
            lam[idx] = lam_g
        unstage_step(call, ws, ms)
        return MultiResult(torch.tensor(False, device=device), torch.from_numpy(lam))

    # -- multi-tensor pieces, for callers that combine the sums across processes (ShardedLARS) --
    def _square_sums_launch(
        self, weights: list[torch.Tensor], grads: list[torch.Tensor], adapt: list[bool]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Σw² (0 where not adapted) and Σg² of every tensor from ONE square-sums launch (fp32
        partials added in chunk order), or None when one launch cannot take these tensors (not
        all fp32 or all fp16): the caller then goes tensor by tensor."""
        if not kernel_dtypes_ok([*weights, *grads]):
            return None
        n = len(grads)
        ws = [aligned(w) for w in weights]
        gs = [aligned(g) for g in grads]
        _, _, w_s, g_s = self._run(
            ws, gs, [None] * n, adapt=adapt, first=[False] * n, nesterov=[False] * n,
            wd=[0.0] * n, lr=[0.0] * n, mu=[0.0] * n, hyper=Hyper(), mode=0, run_update=False,
        )  # fmt: skip
        return np.asarray(w_s, dtype=np.float64), np.asarray(g_s, dtype=np.float64)

    def _rewrite_launch(
        self,
        weights: list[torch.Tensor],
        grads: list[torch.Tensor],
        adapt: list[bool],
        w_s: np.ndarray,
        g_s: np.ndarray,
        weight_decays: list[float],
        lrs: list[float],
        hyper: Hyper,
    ) -> tuple[bool, np.ndarray] | None:
        """In place, grads[i] ← λ_i·(g_i + wd_i·w_i) where adapt[i], with λ from the GIVEN sums
        of squares (one per tensor, e.g. all-reduced over ranks), in ONE update launch. Returns
        (found_inf, λ as the kernel computed it); nothing is written when a given Σg² is not
        finite. None when one launch cannot take these tensors."""
        if not kernel_dtypes_ok([*weights, *grads]):
            return None
        n = len(grads)
        fp32_per_tensor(norm_weight=w_s, norm_gradient=g_s, weight_decays=weight_decays, lrs=lrs)
        fp32_inputs(epsilon=hyper.epsilon, coefficient=hyper.coefficient)
        ws = [aligned(w) for w in weights]
        gs = [aligned(g) for g in grads]
        found, lam, _, _ = self._run(
            ws, gs, [None] * n, adapt=adapt, first=[False] * n, nesterov=[False] * n,
            wd=weight_decays, lr=lrs, mu=[0.0] * n, hyper=hyper, mode=0,
            given=(np.asarray(w_s, dtype=np.float64), np.asarray(g_s, dtype=np.float64)),
        )  # fmt: skip
        if not found:
            unstage_grads(grads, gs, adapt)
        return bool(found), np.asarray(lam, dtype=np.float64)

    # -- the sharded step's pieces (lars_npu.distributed): one launch per dtype group --
    def square_sums(
        self, weights: list[torch.Tensor], grads: list[torch.Tensor], adapt: list[bool]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One square-sums launch per dtype group (fp32, fp16); tensors the kernels do not take
        (bf16, fp64, mixed pairs) go tensor by tensor (the per-tensor default)."""
        if not grads or not kernel_pairs_ok(weights, grads):
            return per_tensor_square_sums(self, weights, grads, adapt)
        groups = dtype_groups(weights, grads, self.name)
        w_s, g_s = self._sums_of_groups(weights, grads, adapt, groups)
        return torch.from_numpy(w_s), torch.from_numpy(g_s)

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
        """One update launch per dtype group with the given sums; λ as the kernel applied it."""
        if not grads or not kernel_pairs_ok(weights, grads):
            return per_tensor_rewrite_given_sums_(
                self, weights, grads, w_s, g_s, weight_decays, lrs, hyper
            )
        lam = np.ones(len(grads))
        for idx in dtype_groups(weights, grads, self.name):
            res = self._rewrite_launch(
                [weights[i] for i in idx], [grads[i] for i in idx], [True] * len(idx),
                np.asarray(w_s)[idx], np.asarray(g_s)[idx], [weight_decays[i] for i in idx],
                [lrs[i] for i in idx], hyper,
            )  # fmt: skip
            if res is None or res[0]:  # one dtype per group; the sums were checked finite
                raise RuntimeError(
                    f"{self.name}: the update kernel refused sums the host found finite"
                )
            lam[idx] = res[1]
        return lam
