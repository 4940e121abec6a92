"""``npu`` backend: the AscendC kernels on an Ascend NPU, launched by ``lars_npu._C`` (built with
CANN, RUN_MODE=npu) on torch_npu's current stream, with the tensors' device pointers.

Per step: the host builds the kernels' workspace (``_ascend.py``), copies to a device buffer kept
between steps only the bytes that differ from what that buffer is known to hold
(:class:`ResidentWorkspaces`), the square-sums, λ and update kernels run back to back on the
current stream (the update kernel finds a core's non-finite flag on the device and then writes
nothing), and the backend returns
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

import contextlib
import itertools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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


# The results regions (never compared: the kernels write them; csrc/npu/lars_resident.h).
_RESULT_REGIONS = frozenset({"partials", "flags", "lambda"})


@dataclass(eq=False)
class _Resident:
    """One device workspace buffer and what it is known to hold."""

    device: torch.device
    stream: int
    buf: torch.Tensor | None = None  # uint8 on `device`, allocated while `stream` was current
    layout: tuple[int, int] | None = None  # (n, num_chunks) of `shadow`
    shadow: np.ndarray | None = None  # the bytes sent to `buf`; None: nothing is known
    busy: bool = False
    last_use: int = 0


class ResidentWorkspaces:
    """The npu backend's device workspaces, kept between steps (docs/ascend.md, "The resident
    workspace"). Each launch the host still builds the whole workspace; ``_C.workspace_upload``
    (csrc/npu/lars_resident.h, the rules the NPU operators and the staging runner follow too)
    compares it byte for byte with what the chosen buffer is known to hold and says which ranges
    to copy and which to zero on the device; nothing else decides that a byte need not be sent.

    Safety: buffers belong to one thread (a per-thread pool: the outcome a launch leaves on the
    device is read by the same thread before its next launch) and to the (device, stream) they
    were allocated on, so every copy into a buffer comes after the previous launch's kernels and
    reads in stream order; a buffer is leased to one launch at a time; a launch that throws
    anywhere (a copy, the launch itself) leaves its buffer unknown, and a new or reallocated
    buffer is unknown: the next launch on it sends everything it needs."""

    POOL = 4  # buffers per thread and (device, stream)

    def __init__(self) -> None:
        self._local = threading.local()
        self._clock = itertools.count(1)

    def _pool(self) -> list[_Resident]:
        pool: list[_Resident] | None = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = []
        return pool

    @property
    def last(self) -> dict[str, Any] | None:
        """What the calling thread's last launch sent (``_C.workspace_upload``'s keys)."""
        last: dict[str, Any] | None = getattr(self._local, "last", None)
        return last

    def clear(self) -> None:
        """Drop the calling thread's buffers (the next launch allocates and sends everything)."""
        self._pool().clear()

    def _acquire(
        self, device: torch.device, stream: int, blob: np.ndarray, n: int, nc: int, **run: bool
    ) -> tuple[_Resident, dict[str, Any] | None]:
        """A buffer for this launch, chosen by a byte comparison with what each is known to hold:
        the known one that needs fewest bytes, if at most half of what it holds (the same model:
        a new lr, a re-allocated gradient); else one nothing is known of, or a new one while the
        pool has room (another model gets its own); else that known one, or the least recently
        used. Returns it with its upload plan when one was made for it (the choice never decides
        what is sent: the plan does)."""
        C = loaded()
        pool = self._pool()
        mine = [e for e in pool if e.device == device and e.stream == stream]
        idle = [e for e in mine if not e.busy]
        near: tuple[int, int, _Resident, dict[str, Any]] | None = None
        unknown = None
        for e in idle:
            if e.shadow is None or e.layout != (n, nc) or e.buf is None:
                unknown = unknown or e
                continue
            up = C.workspace_upload(n, nc, e.shadow, blob, **run)
            differ = sum(b for r, b in up["regions"].items() if r not in _RESULT_REGIONS)
            if near is None or differ < near[0]:
                near = (differ, up["compared"], e, up)
        best = near[2] if near is not None and 2 * near[0] <= near[1] else unknown
        if best is None and len(mine) >= self.POOL:
            best = near[2] if near else min(idle, key=lambda e: e.last_use, default=None)
        if best is None:
            best = _Resident(device, stream)
            pool.append(best)
        best.last_use = next(self._clock)
        return best, (near[3] if near is not None and best is near[2] else None)

    @contextlib.contextmanager
    def lease(
        self,
        blob: np.ndarray,
        layout: dict[str, int],
        *,
        device: torch.device,
        stream: int,
        run_square_sums: bool,
        run_update: bool,
    ) -> Iterator[torch.Tensor]:
        """The device workspace for this launch (``layout["bytes"]`` bytes on ``device``), brought
        to what the launch needs of ``blob``; known after the ``with`` block only if it ran to
        its end."""
        n, nc, nbytes = layout["n"], layout["num_chunks"], layout["bytes"]
        e, plan = self._acquire(
            device, stream, blob, n, nc, run_square_sums=run_square_sums, run_update=run_update
        )
        e.busy = True
        known, e.shadow = e.shadow, None  # unknown until this launch completes
        try:
            if e.buf is None or e.buf.numel() < nbytes or e.buf.numel() > 4 * nbytes + 65536:
                e.buf = None  # (the old one back to the allocator first)
                e.buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
                # 0xFF (NaN as fp32) until sent to: a results block the rules wrongly left to
                # the kernels shows as NaN, never as a lucky zero
                e.buf.fill_(255)
                known = plan = None
            if e.layout != (n, nc):
                known = plan = None
            if plan is None:  # (else: _acquire's, made against `known` for this launch)
                plan = loaded().workspace_upload(
                    n, nc, known, blob, run_square_sums=run_square_sums, run_update=run_update
                )
            src = torch.from_numpy(blob)
            shadow = blob.copy() if known is None else known
            for off, size, zero in plan["ranges"]:
                if zero:
                    e.buf[off : off + size].zero_()
                else:
                    e.buf[off : off + size].copy_(src[off : off + size])
                    shadow[off : off + size] = blob[off : off + size]
            self._local.last = {k: v for k, v in plan.items() if k != "ranges"}
            yield e.buf[:nbytes]
            e.shadow, e.layout = shadow, (n, nc)  # the launch completed: known from now on
        finally:
            e.busy = False


class NpuBackend(AscendKernelBackend):
    name = "npu"
    # every dtype: fp32/fp16 on the kernels, the rest on torch ops (all checked)
    dtypes: tuple[torch.dtype, ...] | None = None

    def __init__(self) -> None:
        self._torch = TorchBackend()
        self.resident = ResidentWorkspaces()

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
            stream = int(npu.npu.current_stream(device).npu_stream)
            with self.resident.lease(
                blob, layout, device=device, stream=stream,
                run_square_sums=run_square_sums, run_update=run_update,
            ) as ws:  # fmt: skip
                loaded().npu_launch(
                    stream,
                    ws.data_ptr(),
                    layout["n"],
                    layout["num_chunks"],
                    code,
                    run_square_sums,
                    run_update,
                    block_dim(),
                )
            # No copy back here: found_inf and λ are read from `ws` on the device by this thread
            # right after (_ascend._lazy_outcome), queued on the stream before its next launch
            # copies anything into the buffer.
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
