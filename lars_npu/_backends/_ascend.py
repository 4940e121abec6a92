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
device copies and the launch on the stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._native import constants, loaded
from ._staging import has_lazy_bits, resolved, stage_step, unstage_grads, unstage_step
from ._staging import ptrs as _ptrs
from .base import Hyper, MultiResult, per_tensor_rewrite_given_sums_, per_tensor_square_sums

if TYPE_CHECKING:
    from .._fused import FusedCall

# The kernels' numbers (tiles, chunk, dtype codes, flag slots, GM alignment) are defined once, in
# csrc/ascendc/lars_tiling.h and lars_host_plan.h, and read from _C.build_info()
# (lars_npu._backends._native.constants); the kernels take fp32 and fp16.
_KERNEL_DTYPES = (torch.float32, torch.float16)


def kernel_codes() -> dict[torch.dtype, int]:
    """The kernels' dtype codes (fp32, fp16), from the loaded ``_C``."""
    codes = constants().dtype_codes
    return {d: codes[d] for d in _KERNEL_DTYPES}


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` when the kernels can take it as it is (contiguous, base address 32-byte aligned), else
    a contiguous copy in a fresh allocation (torch's allocators align those to ≥ 64 bytes): a view
    that starts at an odd element, e.g. ``x[1:]``, is staged, never given to the kernels."""
    if has_lazy_bits(t):  # negative/conjugate bit: a copy whose memory holds the values
        return resolved(t).clone(memory_format=torch.contiguous_format)
    if t.is_contiguous() and (t.numel() == 0 or t.data_ptr() % constants().gm_align == 0):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def dtype_code(ts: list[torch.Tensor], backend: str) -> int:
    """0 (fp32) or 1 (fp16) for a list of tensors of one of those dtypes; TypeError otherwise."""
    codes = set()
    for t in ts:
        code = kernel_codes().get(t.dtype)
        if code is None:
            raise TypeError(
                f"the {backend} backend (AscendC kernels) takes float32 and float16 tensors, "
                f"got {t.dtype}"
            )
        codes.add(code)
    if len(codes) > 1:
        raise TypeError(f"the {backend} backend runs one dtype per call (float32 or float16)")
    return codes.pop() if codes else 0


FP32_MAX = float(np.finfo(np.float32).max)
FP32_TINY = float(np.finfo(np.float32).tiny)


def fp32_inputs(**values: float) -> None:
    """ValueError naming the first value that fp32 cannot carry: beyond its range, or a
    positive value that would flush to zero."""
    for name, v in values.items():
        if abs(v) > FP32_MAX or (v != 0 and abs(v) < FP32_TINY):
            raise ValueError(
                f"{name}={v!r} is outside float32's range, in which the AscendC kernels take it"
            )


def fp32_per_tensor(**lists: Any) -> None:
    """ValueError naming the first per-tensor value (``name[i]``) that fp32 cannot carry, by
    ``fp32_inputs``'s rule; vectorised, so a step over thousands of tensors pays little."""
    for name, values in lists.items():
        a = np.abs(np.asarray(values, dtype=np.float64))
        bad = np.flatnonzero((a > FP32_MAX) | ((a != 0) & (a < FP32_TINY)))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{name}[{i}]={float(np.asarray(values, dtype=np.float64)[i])!r} is outside "
                "float32's range, in which the AscendC kernels take it"
            )


def step_args(**fields: Any) -> Any:
    """The host plan's input struct, ``_C.AscendStep`` (csrc/ascendc/lars_host_plan.h StepArgs),
    with its fields set by name; an unknown name is an AttributeError."""
    step = loaded().AscendStep()
    for name, value in fields.items():
        setattr(step, name, value)
    return step


def dtype_groups(ws: list[torch.Tensor], gs: list[torch.Tensor], backend: str) -> list[list[int]]:
    """Tensor indices grouped by dtype, fp32 first (each group: one launch pair), for lists whose
    every weight and gradient is fp32 or fp16 with the two alike; TypeError otherwise."""
    groups: dict[int, list[int]] = {}
    for i, (w, g) in enumerate(zip(ws, gs, strict=True)):
        code = kernel_codes().get(w.dtype)
        if code is None or g.dtype != w.dtype:
            raise TypeError(
                f"the {backend} backend (AscendC kernels) takes float32 and float16 tensors, each "
                f"weight with a gradient of its dtype; tensor {i}: {w.dtype}, {g.dtype}"
            )
        groups.setdefault(code, []).append(i)
    return [groups[c] for c in sorted(groups)]


def kernel_pairs_ok(
    ws: list[torch.Tensor], gs: list[torch.Tensor], *, cast_grads: bool = False
) -> bool:
    """Whether the kernels can take these (weight, gradient) pairs, in dtype groups: every weight
    fp32 or fp16, each gradient of its weight's dtype (any of the two with ``cast_grads``)."""
    return all(
        w.dtype in _KERNEL_DTYPES
        and (g.dtype == w.dtype or (cast_grads and g.dtype in _KERNEL_DTYPES))
        for w, g in zip(ws, gs, strict=True)
    )


def kernel_dtypes_ok(ts: list[torch.Tensor]) -> bool:
    """Whether one kernel launch can take these tensors (all fp32 or all fp16)."""
    return len({t.dtype for t in ts}) <= 1 and all(t.dtype in _KERNEL_DTYPES for t in ts)


class AscendKernelBackend:
    """The four backend operations on the AscendC kernels; subclasses provide ``_launch``."""

    name = "ascend"
    dtypes: tuple[torch.dtype, ...] | None = (torch.float32, torch.float16)  # the kernels'
    verifies_layout = False  # every fused step stages and checks its tensors

    def _launch(
        self,
        blob: np.ndarray,
        layout: dict[str, int],
        code: int,
        *,
        run_square_sums: bool,
        run_update: bool,
        device: torch.device,
    ) -> torch.Tensor | None:
        """Run the kernels on the workspace ``blob``. Returns None when they ran on ``blob``
        itself (its results region is filled in on return), or the device copy of the workspace,
        whose results region the kernels fill asynchronously (on the NPU's stream)."""
        raise NotImplementedError

    @staticmethod
    def _outcome(
        blob: np.ndarray, layout: dict[str, int], dev_ws: torch.Tensor | None
    ) -> tuple[bool, np.ndarray, np.ndarray, np.ndarray]:
        """(found_inf, λ, Σw², Σg²) on the host; with a device workspace, its results region is
        copied back first, which waits for the kernels."""
        if dev_ws is not None:
            p = layout["partials"]
            blob[p:] = dev_ws[p:].cpu().numpy()
        return loaded().ascend_read_back(blob, layout["n"], layout["num_chunks"])

    @classmethod
    def _lazy_outcome(
        cls, blob: np.ndarray, layout: dict[str, int], dev_ws: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """found_inf (0-dim bool) and λ (float64 per tensor, NaN when skipped) as tensors on the
        workspace's device, computed there from the cores' flags and the λ table the update
        kernel wrote (csrc/ascendc/lars_tiling.h): no host wait; it comes only when someone
        reads them (``bool(found_inf)``, ``trust_ratio.tolist()``)."""
        if dev_ws is None:
            host_found, host_lam, _, _ = cls._outcome(blob, layout, None)
            return torch.tensor(bool(host_found)), torch.from_numpy(
                np.asarray(host_lam, dtype=np.float64)
            )
        n, nc = layout["n"], layout["num_chunks"]
        blocks = dev_ws[layout["partials"] :].view(torch.float32).view(-1, 8)[:, 0]
        slots = constants().flag_slots
        flags = blocks[2 * nc : 2 * nc + slots]  # 0, or NaN for a core that met inf/nan
        found = torch.isnan(flags).any()
        lam = blocks[2 * nc + slots : 2 * nc + slots + n].double()
        return found, torch.where(found, torch.full_like(lam, float("nan")), lam)

    def _plan(
        self, ws, gs, ms, *, adapt, first, nesterov, wd, lr, mu, hyper: Hyper, mode, code, given
    ) -> tuple[np.ndarray, dict[str, int]]:
        step = step_args(
            w=_ptrs(ws),
            g=_ptrs(gs),
            m=_ptrs(ms),
            numel=np.fromiter((g.numel() for g in gs), dtype=np.int64, count=len(gs)),
            adapt=np.asarray(adapt, dtype=np.uint8),
            has_m=np.fromiter((m is not None for m in ms), dtype=np.uint8, count=len(ms)),
            first=np.asarray(first, dtype=np.uint8),
            nesterov=np.asarray(nesterov, dtype=np.uint8),
            wd=np.asarray(wd, dtype=np.float64),
            lr=np.asarray(lr, dtype=np.float64),
            mu=np.asarray(mu, dtype=np.float64),
            epsilon=hyper.epsilon,
            coefficient=hyper.coefficient,
            use_clip=hyper.use_clip,
            guard_zero_norm=hyper.guard_zero_norm,
            dtype=code,
            mode=mode,
            tile_sq=constants().tile_square_sums,
            tile_up=constants().tile_update,
            chunk_elems=constants().chunk,
        )
        if given is not None:
            step.given_ws, step.given_gs = given
        return loaded().ascend_plan(step)

    def _start(
        self,
        ws: list[torch.Tensor],
        gs: list[torch.Tensor],
        ms: list[torch.Tensor | None],
        *,
        adapt: Any,
        first: Any,
        nesterov: Any,
        wd: Any,
        lr: Any,
        mu: Any,
        hyper: Hyper,
        mode: int,
        given: tuple[np.ndarray, np.ndarray] | None = None,
        run_update: bool = True,
    ) -> tuple[np.ndarray, dict[str, int], torch.Tensor | None]:
        """One launch pair over contiguous, aligned tensors of one dtype (n ≥ 1): the workspace,
        its layout and, on a device, its device copy (see ``_launch``)."""
        code = dtype_code([*ws, *gs, *(m for m in ms if m is not None)], self.name)
        blob, layout = self._plan(
            ws, gs, ms, adapt=adapt, first=first, nesterov=nesterov, wd=wd, lr=lr, mu=mu,
            hyper=hyper, mode=mode, code=code, given=given,
        )  # fmt: skip
        dev_ws = self._launch(
            blob,
            layout,
            code,
            run_square_sums=given is None,
            run_update=run_update,
            device=gs[0].device,
        )
        return blob, layout, dev_ws

    def _run(
        self,
        ws: list[torch.Tensor],
        gs: list[torch.Tensor],
        ms: list[torch.Tensor | None],
        **kw: Any,
    ) -> tuple[bool, np.ndarray, np.ndarray, np.ndarray]:
        """``_start``, then its outcome on the host: (found_inf, λ, Σw², Σg²)."""
        if not gs:
            z = np.zeros(0)
            return False, z, z, z
        return self._outcome(*self._start(ws, gs, ms, **kw))

    def _run_lazy(
        self,
        ws: list[torch.Tensor],
        gs: list[torch.Tensor],
        ms: list[torch.Tensor | None],
        device: torch.device,
        **kw: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``_start``, then found_inf and λ as tensors on the device, without waiting."""
        if not gs:
            return torch.tensor(False, device=device), torch.zeros(0, dtype=torch.float64)
        return self._lazy_outcome(*self._start(ws, gs, ms, **kw))

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
