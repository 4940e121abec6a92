"""``npu`` backend: the AscendC kernels on an Ascend NPU, launched by ``lars_npu._C`` (built with
CANN, RUN_MODE=npu) on torch_npu's current stream, with the tensors' device pointers.

Per step: the host builds the kernels' workspace (``_ascend.py``), one host-to-device copy moves
it, the square-sums, λ and update kernels run back to back on the current stream (the update kernel
finds a core's non-finite flag on the device and then writes nothing), and the backend returns
found_inf and λ as tensors on the device, computed there from the workspace: nothing waits for
the kernels in the backend (except to copy staged views back, which needs the decision). A host
wait comes when someone reads them — today the optimizer does, ``bool(found_inf)`` in
``LARS._finish``, to decide whether the inner optimizer steps.

Lists that mix fp32 and fp16 are grouped by dtype, one launch pair per group (as apex's fused
optimizers group per dtype). Calls with tensors the kernels do not take (bfloat16, float64) run on
the ``torch`` backend's ops on the same device instead: correct everywhere, not fused.

Written for CANN and torch_npu, and tested on lars_npu's CI only through the shared code path on
the emulation (the ``emu`` backend) and with a stand-in launcher: no Ascend hardware or CANN is on
those machines. ``lars-npu check --backend npu`` is the test to run on an NPU.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._ascend import AscendKernelBackend, kernel_dtypes_ok, kernel_pairs_ok
from ._native import loaded, loaded_torch_npu, native, native_error, torch_npu, torch_npu_error
from .base import Hyper, MultiResult
from .torch_ import TorchBackend

if TYPE_CHECKING:
    from .._fused import FusedCall

BLOCK_DIM_ENV = "LARS_NPU_BLOCK_DIM"  # AI cores per launch; default 0: every vector core


def block_dim() -> int:
    raw = os.environ.get(BLOCK_DIM_ENV, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{BLOCK_DIM_ENV}={raw!r}: expected a non-negative integer") from None
    if value < 0:
        raise ValueError(f"{BLOCK_DIM_ENV}={raw!r}: expected a non-negative integer")
    return value


class NpuBackend(AscendKernelBackend):
    name = "npu"
    # every dtype: fp32/fp16 on the kernels, the rest on torch ops (all checked)
    dtypes: tuple[torch.dtype, ...] | None = None

    def __init__(self) -> None:
        self._torch = TorchBackend()

    def available(self) -> tuple[bool, str]:
        C = native()
        if C is None:
            return False, native_error()
        if not hasattr(C, "npu_launch"):
            return False, (
                "lars_npu._C was built without CANN (set ASCEND_CANN_PACKAGE_PATH and "
                "SOC_VERSION and reinstall; see docs/ascend.md)"
            )
        npu = torch_npu()
        if npu is None:
            return False, torch_npu_error()
        try:
            count = npu.npu.device_count()
        except (RuntimeError, AttributeError) as exc:
            return False, f"torch_npu cannot see an NPU ({type(exc).__name__}: {exc})"
        if count < 1:
            return False, "torch_npu sees no NPU device (is /dev/davinci* mounted?)"
        return True, ""

    def supports(self, device: torch.device) -> bool:
        return device.type == "npu"

    def _launch(
        self,
        blob: np.ndarray,
        layout: dict[str, int],
        code: int,
        *,
        run_square_sums: bool,
        run_update: bool,
        device: torch.device,
    ) -> torch.Tensor:
        npu = loaded_torch_npu()
        # ACL launches on the current device's context: make it the tensors' device
        with npu.npu.device(device):
            ws = torch.empty(blob.nbytes, dtype=torch.uint8, device=device)
            ws.copy_(torch.from_numpy(blob))  # one host-to-device copy of the workspace
            stream = npu.npu.current_stream(device).npu_stream
            loaded().npu_launch(
                int(stream),
                ws.data_ptr(),
                layout["n"],
                layout["num_chunks"],
                code,
                run_square_sums,
                run_update,
                block_dim(),
            )
            # No copy back here: found_inf and λ are read from `ws` on the device when someone
            # asks (_ascend._lazy_outcome); torch_npu's caching allocator keeps `ws` for the
            # stream's work while the tensors derived from it live.
            return ws

    # Tensors the kernels do not take go to torch ops on the same device.
    def square_sum_all(
        self, weight: torch.Tensor, gradient: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not kernel_dtypes_ok([weight, gradient]):
            return self._torch.square_sum_all(weight, gradient)
        return super().square_sum_all(weight, gradient)

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
        if not kernel_dtypes_ok([weight, gradient]):
            return self._torch.lars_update(weight, gradient, w_s, g_s, weight_decay, lr, hyper)
        return super().lars_update(weight, gradient, w_s, g_s, weight_decay, lr, hyper)

    def multi_lars_(
        self,
        weights: list[torch.Tensor],
        grads: list[torch.Tensor],
        adapt: list[bool],
        weight_decays: list[float],
        lrs: list[float],
        hyper: Hyper,
    ) -> MultiResult:
        # fp32 and fp16 (mixed too: one launch pair per dtype group) on the kernels
        if not kernel_pairs_ok(weights, grads):
            return self._torch.multi_lars_(weights, grads, adapt, weight_decays, lrs, hyper)
        return super().multi_lars_(weights, grads, adapt, weight_decays, lrs, hyper)

    def fused_sgd_(self, call: FusedCall) -> MultiResult:
        if not kernel_pairs_ok(call.params, call.grads, cast_grads=True):
            return self._torch.fused_sgd_(call)
        return super().fused_sgd_(call)
