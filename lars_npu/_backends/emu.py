"""``emu`` backend: the AscendC kernels (csrc/ascendc/) run on lars_npu's own host emulation of
the AscendC API (csrc/emu/), on CPU tensors (the emulated global memory is host memory).

It exists so that the NPU kernel source, and the host code the ``npu`` backend shares with it
(``_ascend.py``), are exercised from Python on machines without Ascend hardware or CANN. It is our
emulation, not CANN's simulator, and passing it is no claim that the kernels ran on Ascend. Never
chosen by default: ask for it with ``LARS_NPU_BACKEND=emu`` or ``LARS(..., backend="emu")``. Like
the kernels, it takes fp32 and fp16 tensors.

``LARS_NPU_EMU_RUNNER`` (read at call time) picks what runs the kernels:

- ``emulation`` (default): lars_npu's emulation, in place on the host workspace;
- ``staged``: the same emulation through the staging runner (tensors copied into a separate
  "device" buffer and back), the path of CANN's cpu / sim builds;
- ``cann``: the kernels as CANN built them with ``RUN_MODE=cpu`` (tikicpulib) or ``sim`` — only in
  an extension built with CANN (``lars-npu info`` says); this is what docker/cann-emulator-ci.sh
  runs the emu test-suite against.

``LARS_NPU_EMU_CORE_ORDER`` (``forward``, ``reverse``, ``shuffle:<seed>``) picks the order in
which the emulation runs a launch's cores; results must not depend on it.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ._ascend import AscendKernelBackend
from ._native import native, native_error

# The emulated device: Atlas A2 (910B) Unified Buffer, and a block count of 8 AI cores.
BLOCK_DIM = 8
UB_BYTES = 192 * 1024

RUNNER_ENV = "LARS_NPU_EMU_RUNNER"
RUNNERS = ("emulation", "staged", "cann")

# The order in which the emulation runs the cores of a launch (hardware runs them concurrently;
# the tests require identical results in every order): forward (default), reverse, or
# shuffle:<seed> (a positive integer).
CORE_ORDER_ENV = "LARS_NPU_EMU_CORE_ORDER"


def core_order() -> int:
    """``LARS_NPU_EMU_CORE_ORDER`` as the emulation's code: 0 forward, -1 reverse, k > 0 the
    seed of a shuffle (ValueError for anything else)."""
    raw = os.environ.get(CORE_ORDER_ENV, "").strip() or "forward"
    if raw == "forward":
        return 0
    if raw == "reverse":
        return -1
    if raw.startswith("shuffle:") and raw[8:].isdigit() and int(raw[8:]) > 0:
        return int(raw[8:])
    raise ValueError(
        f"{CORE_ORDER_ENV}={raw!r}: expected forward, reverse or shuffle:<positive seed>"
    )


def runner() -> str:
    """The kernel runner chosen by ``LARS_NPU_EMU_RUNNER`` (ValueError for an unknown one)."""
    r = os.environ.get(RUNNER_ENV, "").strip() or "emulation"
    if r not in RUNNERS:
        raise ValueError(f"{RUNNER_ENV}={r!r}: expected one of {', '.join(RUNNERS)}")
    return r


class EmuBackend(AscendKernelBackend):
    name = "emu"

    def available(self) -> tuple[bool, str]:
        C = native()
        if C is None:
            return False, native_error()
        if not hasattr(C, "emu_launch"):
            return False, "lars_npu._C was built without the AscendC emulation"
        return True, ""

    def supports(self, device: torch.device) -> bool:
        return device.type == "cpu"

    def _launch(
        self,
        blob: np.ndarray,
        layout: dict[str, int],
        code: int,
        *,
        run_square_sums: bool,
        run_update: bool,
        device: torch.device,
    ) -> None:
        C = native()
        n, nc = layout["n"], layout["num_chunks"]
        how = runner()
        if how == "cann":
            if not hasattr(C, "cann_host_launch"):
                raise RuntimeError(
                    f"{RUNNER_ENV}=cann: this lars_npu._C was built without CANN "
                    "(build with RUN_MODE=cpu or sim; see README 'Ascend NPU')"
                )
            C.cann_host_launch(blob, n, nc, code, run_square_sums, run_update, BLOCK_DIM)
            return
        C.emu_launch(
            blob,
            n,
            nc,
            code,
            run_square_sums,
            run_update,
            BLOCK_DIM,
            UB_BYTES,
            how == "staged",
            core_order(),
        )
