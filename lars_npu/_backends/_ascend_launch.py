"""How the AscendC kernels are started, for the ``npu`` and ``emu`` backends
(:mod:`._ascend` has the whole story): the workspace plan of one launch pair, the launch (the
part each backend provides), and the outcome read back on the host or left on the device."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._native import constants, loaded
from ._staging import has_lazy_bits, resolved
from ._staging import ptrs as _ptrs
from .base import FP32_MAX, Hyper

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


class AscendLauncher:
    """The launch machinery; subclasses provide ``_launch`` (and ``name``)."""

    name = "ascend"

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
