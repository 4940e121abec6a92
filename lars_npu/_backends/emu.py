"""``emu`` backend: the AscendC kernels (csrc/ascendc/) run on lars_npu's own host emulation of
the AscendC API (csrc/emu/), on CPU tensors (the emulated global memory is host memory).

It exists so that the NPU kernel source is exercised, from Python, on machines without Ascend
hardware or CANN. It is our emulation, not CANN's simulator, and passing it is no claim that the
kernels ran on Ascend. Never chosen by default: ask for it with ``LARS_NPU_BACKEND=emu`` or
``LARS(..., backend="emu")``. Like the kernels, it takes fp32 and fp16 tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ._native import native, native_error
from ._staging import contig as _contig
from ._staging import ptrs as _ptrs
from ._staging import stage_step, unstage_grads, unstage_step
from .base import Hyper, MultiResult

if TYPE_CHECKING:
    from .._fused import FusedCall

# The emulated device: Atlas A2 (910B) Unified Buffer, and a block count of 8 AI cores.
BLOCK_DIM = 8
UB_BYTES = 192 * 1024
TILE_SQUARE_SUMS = 4096
TILE_UPDATE = 2048
CHUNK = 16384

_CODES = {torch.float32: 0, torch.float16: 1}


def _code(t: torch.Tensor) -> int:
    code = _CODES.get(t.dtype)
    if code is None:
        raise TypeError(
            f"the emu backend (AscendC kernels) takes float32 and float16 tensors, got {t.dtype}"
        )
    return code


def _one_dtype(ts: list[torch.Tensor]) -> int:
    codes = {_code(t) for t in ts}
    if len(codes) > 1:
        raise TypeError("the emu backend runs one dtype per call (float32 or float16)")
    return codes.pop() if codes else 0


class EmuBackend:
    name = "emu"
    dtypes = (torch.float32, torch.float16)  # what the AscendC kernels take

    def available(self) -> tuple[bool, str]:
        C = native()
        if C is None:
            return False, native_error()
        if not hasattr(C, "emu_lars_step"):
            return False, "lars_npu._C was built without the AscendC emulation"
        return True, ""

    def supports(self, device: torch.device) -> bool:
        return device.type == "cpu"

    def _run(
        self, ws, gs, ms, *, adapt, first, nesterov, wd, lr, mu, hyper: Hyper, mode, given=None
    ):
        n = len(gs)
        code = _one_dtype(list(gs))
        empty = np.zeros(0)
        return (
            native().emu_lars_step(
                _ptrs(ws),
                _ptrs(gs),
                _ptrs(ms),
                np.array([g.numel() for g in gs], dtype=np.int64),
                np.asarray(adapt, dtype=np.uint8),
                np.array([m is not None for m in ms], np.uint8),
                np.asarray(first, dtype=np.uint8),
                np.asarray(nesterov, dtype=np.uint8),
                np.asarray(wd, dtype=np.float64),
                np.asarray(lr, dtype=np.float64),
                np.asarray(mu, dtype=np.float64),
                hyper.epsilon,
                hyper.coefficient,
                hyper.use_clip,
                hyper.guard_zero_norm,
                code,
                mode,
                BLOCK_DIM,
                UB_BYTES,
                TILE_SQUARE_SUMS,
                TILE_UPDATE,
                CHUNK,
                empty if given is None else given[0],
                empty if given is None else given[1],
            )
            if n
            else (False, np.zeros(0))
        )

    def square_sum_all(
        self, weight: torch.Tensor, gradient: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w, g = _contig(weight), _contig(gradient)
        code = _one_dtype([w, g])
        w_s, g_s = native().emu_square_sums(
            _ptrs([w]),
            _ptrs([g]),
            np.array([g.numel()], dtype=np.int64),
            code,
            BLOCK_DIM,
            UB_BYTES,
            TILE_SQUARE_SUMS,
            CHUNK,
        )
        return torch.tensor(w_s[0], dtype=torch.float32), torch.tensor(g_s[0], dtype=torch.float32)

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
        w = _contig(weight)
        out = gradient.clone(memory_format=torch.contiguous_format)
        self._run(
            [w],
            [out],
            [None],
            adapt=[True],
            first=[False],
            nesterov=[False],
            wd=[weight_decay],
            lr=[lr],
            mu=[0.0],
            hyper=hyper,
            mode=0,
            given=(np.array([w_s]), np.array([g_s])),
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
        n = len(grads)
        ws = [_contig(w) for w in weights]
        gs = [_contig(g) for g in grads]
        found, lam = self._run(
            ws,
            gs,
            [None] * n,
            adapt=adapt,
            first=[False] * n,
            nesterov=[False] * n,
            wd=weight_decays,
            lr=lrs,
            mu=[0.0] * n,
            hyper=hyper,
            mode=0,
        )
        if not found:
            unstage_grads(grads, gs)
        return MultiResult(torch.tensor(bool(found)), torch.from_numpy(np.asarray(lam)))

    def fused_sgd_(self, call: FusedCall) -> MultiResult:
        ws, gs, ms = stage_step(call)  # buffers in the parameter's dtype, like the CPU path
        found, lam = self._run(
            ws,
            gs,
            ms,
            adapt=call.adapt,
            first=call.first,
            nesterov=call.nesterov,
            wd=call.wd,
            lr=call.lr,
            mu=call.mu,
            hyper=call.hyper,
            mode=1,
        )
        if not found:
            unstage_step(call, ws, ms)
        return MultiResult(torch.tensor(bool(found)), torch.from_numpy(np.asarray(lam)))
