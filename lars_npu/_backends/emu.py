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
  "device" buffer and back), the path of CANN's cpu / sim builds; the buffer is kept per thread
  between launches, so the resident workspace's rules (send only what differs from what the
  buffer is known to hold) run on every staged launch;
- ``cann``: the kernels as CANN built them with ``RUN_MODE=cpu`` (tikicpulib) or ``sim`` — only in
  an extension built with CANN (``lars-npu info`` says); this is what docker/cann-emulator-ci.sh
  runs the emu test-suite against.
- ``real``: the same kernel source compiled against Huawei's REAL AscendC headers (their CPU-debug
  implementation of DataCopy, ReduceSum, TPipe, ...) on lars_npu's own model of the intrinsics
  beneath them, sequentially, in place — only when built with ``-DLARS_NPU_ASC_DEVKIT`` and
  ``-DLARS_NPU_ASC_TOOLS`` (lars_npu/_asc_real.so; docs/emulation.md). It honours the core order
  and the floating-point mode below.

``LARS_NPU_EMU_CORE_ORDER`` (``forward``, ``reverse``, ``shuffle:<seed>``) picks the order in
which the emulation runs a launch's cores; results must not depend on it.

``LARS_NPU_EMU_FLOAT_MODE`` (``saturation``, the default, or ``inf_nan``) picks the Atlas A2
floating-point mode (CTRL[48]) every emulated launch starts in, as a stream's mode does on the
device: in saturation mode fp16 inf / NaN become ±65504 / 0. The fp16 kernels switch to INF_NAN
for their run and back (csrc/ascendc/lars_float_mode.h), so results must not depend on it either.

``LARS_NPU_EMU_AUTO_SYNC`` (``on``, the default, or ``off``): off, the emulation takes the kernels
to be built without the compiler's ``--cce-auto-sync`` and refuses a vector instruction that
depends on an earlier one with no ``PipeBarrier<PIPE_V>`` between them (docs/emulation.md).
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._ascend import AscendKernelBackend
from ._native import loaded, native, native_error

# The emulated device: Atlas A2 (910B) Unified Buffer, and a block count of 8 AI cores.
BLOCK_DIM = 8
UB_BYTES = 192 * 1024

RUNNER_ENV = "LARS_NPU_EMU_RUNNER"
RUNNERS = ("emulation", "staged", "cann", "real")

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


# The floating-point mode each emulated launch starts in (the stream's mode on the device).
FLOAT_MODE_ENV = "LARS_NPU_EMU_FLOAT_MODE"
FLOAT_MODES = ("saturation", "inf_nan")


def saturation() -> bool:
    """``LARS_NPU_EMU_FLOAT_MODE`` as the emulation's flag: True for ``saturation`` (the default),
    False for ``inf_nan`` (ValueError for anything else)."""
    raw = os.environ.get(FLOAT_MODE_ENV, "").strip() or "saturation"
    if raw not in FLOAT_MODES:
        raise ValueError(f"{FLOAT_MODE_ENV}={raw!r}: expected one of {', '.join(FLOAT_MODES)}")
    return raw == "saturation"


# Whether the emulated kernels count as built with --cce-auto-sync (on) or without (off).
AUTO_SYNC_ENV = "LARS_NPU_EMU_AUTO_SYNC"


def auto_sync() -> bool:
    """``LARS_NPU_EMU_AUTO_SYNC`` as the emulation's flag: True for ``on`` (the default), False
    for ``off`` (ValueError for anything else)."""
    raw = os.environ.get(AUTO_SYNC_ENV, "").strip() or "on"
    if raw not in ("on", "off"):
        raise ValueError(f"{AUTO_SYNC_ENV}={raw!r}: expected on or off")
    return raw == "on"


def runner() -> str:
    """The kernel runner chosen by ``LARS_NPU_EMU_RUNNER`` (ValueError for an unknown one)."""
    r = os.environ.get(RUNNER_ENV, "").strip() or "emulation"
    if r not in RUNNERS:
        raise ValueError(f"{RUNNER_ENV}={r!r}: expected one of {', '.join(RUNNERS)}")
    return r


# The `real` runner's library (cmake/LarsAscReal.cmake): its own shared object, loaded with
# RTLD_LOCAL, since the same kernel classes built against the emulation are in lars_npu._C.
REAL_LIBRARY = "_asc_real.so"
_REAL_ERROR_BYTES = 4 * 1024  # room for the runner's error message


@cache
def _real_library() -> tuple[ctypes.CDLL | None, str]:
    path = Path(__file__).resolve().parent.parent / REAL_LIBRARY
    if not path.exists():
        return None, (
            "lars_npu was built without the real AscendC runner (build with LARS_NPU_CMAKE_ARGS="
            '"-DLARS_NPU_ASC_DEVKIT=<asc-devkit> -DLARS_NPU_ASC_TOOLS=<asc-tools>"; '
            'docs/emulation.md, "The real AscendC runner")'
        )
    try:
        lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL)
    except OSError as exc:
        return None, f"{path} does not load ({exc})"
    fn = lib.lars_asc_real_launch
    fn.argtypes = [
        ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int, ctypes.c_int,
        ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_char_p,
        ctypes.c_size_t,
    ]  # fmt: skip
    fn.restype = ctypes.c_int
    return lib, str(path)


def real_runner() -> tuple[bool, str]:
    """(True, the library's path) when the `real` runner is built and loads, else (False, why)."""
    lib, detail = _real_library()
    return lib is not None, detail


def real_launch(
    blob: np.ndarray,
    n: int,
    nc: int,
    code: int,
    run_square_sums: bool,
    run_update: bool,
    block_dim: int,
    order: int = 0,
    saturating: bool = True,
) -> None:
    """One step of the kernels on the `real` runner, in place on the host workspace `blob` (as
    ``_C.emu_launch`` does on the emulation): square sums, then λ and update, on ``block_dim``
    vector cores run in ``order``, each launch starting in saturation mode or INF_NAN."""
    lib, why = _real_library()
    if lib is None:
        raise RuntimeError(f"{RUNNER_ENV}=real: {why}")
    from ._native import constants

    slots = constants().flag_slots
    if block_dim > slots:
        raise ValueError(
            f"block_dim: at most {slots} (one non-finite flag slot per core in the workspace)"
        )
    expected = int(loaded().ascend_layout(n, nc)["bytes"])
    if blob.dtype != np.uint8 or blob.ndim != 1 or blob.size != expected:
        raise ValueError(f"workspace: expected {expected} bytes")
    if not blob.flags.c_contiguous or not blob.flags.writeable:
        raise ValueError("workspace: a writable contiguous uint8 array")
    err = ctypes.create_string_buffer(_REAL_ERROR_BYTES)
    rc = lib.lars_asc_real_launch(
        blob.ctypes.data, n, nc, code, int(run_square_sums), int(run_update), block_dim, order,
        int(saturating), err, _REAL_ERROR_BYTES,
    )  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"real AscendC runner: {err.value.decode(errors='replace')}")


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
        C = loaded()
        n, nc = layout["n"], layout["num_chunks"]
        how = runner()
        # every runner reads the switches, so a bad value is an error whichever runs (the real
        # runner is sequential: auto-sync has nothing to order there)
        order, sat, sync = core_order(), saturation(), auto_sync()
        if how == "cann":
            if not hasattr(C, "cann_host_launch"):
                raise RuntimeError(
                    f"{RUNNER_ENV}=cann: this lars_npu._C was built without CANN "
                    "(build with RUN_MODE=cpu or sim; see docs/ascend.md)"
                )
            C.cann_host_launch(blob, n, nc, code, run_square_sums, run_update, BLOCK_DIM)
            return
        if how == "real":
            real_launch(
                blob, n, nc, code, run_square_sums, run_update, BLOCK_DIM, order, sat
            )  # fmt: skip
            return
        if how == "staged":
            _staged_runner(C).launch(
                blob,
                n,
                nc,
                code,
                run_square_sums,
                run_update,
                order,
                sat,
                sync,
            )
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
            False,
            order,
            saturation=sat,
            auto_sync=sync,
        )


_staged = threading.local()


def _staged_runner(C: Any) -> Any:
    """This thread's staging runner (``_C.StagedRunner``): its emulated device buffer is kept
    between launches, so every staged launch goes through the resident-workspace rules
    (csrc/npu/lars_resident.h) exactly as CANN's cpu / sim builds do: what the buffer is known to
    hold is compared byte for byte, only differences are sent, and a launch that throws leaves
    nothing known. One runner per thread: a runner serves one caller at a time."""
    r = getattr(_staged, "runner", None)
    if r is None:
        r = _staged.runner = C.StagedRunner(BLOCK_DIM, UB_BYTES)
    return r


# -- the NPU cost model: counters of the emulation, never a hardware measurement ---------------

# Atlas 910B: HBM bandwidth (~1.6 TB/s) and vector cores (AIV) a launch spreads over (Ascend910B2:
# 24 AI cores x 2 vector cores). Inputs of the model, stated; nothing here was measured on one.
HBM_BYTES_PER_S = 1.6e12
CORES_910B = 48
IDEAL_FP32_BYTES_PER_PARAM = 28  # pass 1 reads w, g; pass 2 reads w, g, m and writes m, w

# Latency inputs of the model (docs/benchmarks.md, "The NPU cost model"). Documented ones name
# their source; the others are ASSUMPTIONS, round numbers of the right order, not measurements.
# Documented: a launch of an Atlas A2 kernel on every core costs ~20-21 µs before its first
# instruction (core start, TLB misses; asc-devkit docs/zh/guide "分析性能数据", 头开销).
LAUNCH_HEAD_S = 20e-6
# Assumption: the vector cores' clock. 910B's documented fp32 vector peak of 11.06 TOPS for a
# 48-vector-core part (same docs, "理论参数") is 48 x 1.8 GHz x 128.
CLOCK_HZ = 1.8e9
# Assumption: one 256-byte repeat of a vector instruction per cycle (fp32: 64 lanes).
VECTOR_BYTES_PER_CYCLE = 256
# Assumption: a GM -> UB copy issued to an idle DMA pipe waits this long for its first bytes
# (HBM access through the MTE; GPUs' HBM latency is ~0.5-1 µs).
DMA_LATENCY_S = 1.0e-6
# Assumption: a scalar read of global memory that misses the data cache (every kernel invalidates
# it at the start: DataCacheCleanAndInvalid) stalls the scalar unit this long.
SCALAR_GM_READ_S = 0.5e-6
# Assumption: a V -> S round trip (the vector pipe drains, its flag reaches the scalar unit, which
# resumes issuing): a few hundred cycles.
VS_ROUND_TRIP_CYCLES = 200
# Assumptions: the workspace's host-to-device traffic (csrc/npu/lars_resident.h) over the host
# link at an effective 25 GB/s (a PCIe 4.0 x16 link's practical rate; no 910B measurement), and
# a fixed cost per stream-ordered copy or device-side zeroing (submission and DMA set-up; of the
# order of an async memcpy's on other accelerators).
H2D_BYTES_PER_S = 25e9
H2D_OP_S = 10e-6


@dataclass
class StepCost:
    """One fused fp32 LARS + momentum step of the AscendC kernels, as the emulation counts it.
    Per-core figures are the busiest core's per launch, summed over the launches."""

    name: str
    tensors: int
    params: int
    cores: int
    launches: int
    dma_bytes: int  # GM <-> UB over every core and launch
    workspace_bytes: int  # the host plan's workspace (one host-to-device copy per step)
    scalar_reads_max_core: int  # scalar GM reads of the busiest core, summed over the launches
    vector_instrs_max_core: int
    queue_waits_max_core: int
    flag_waits_max_core: int
    model_seconds: float  # sum over launches of the busiest core's bytes at its bandwidth share
    scalar_reads_by_launch: tuple[int, ...] = ()  # the busiest core's, per launch
    # the latency model (latency_seconds): per launch, the launch head plus the slowest core's
    # max(DMA streaming, vector work) + DMA pipe refills + exposed scalar GM reads + V->S trips
    latency_seconds: float = 0.0
    latency_by_launch: tuple[float, ...] = ()  # seconds, per launch
    vs_round_trips_by_launch: tuple[int, ...] = ()  # the busiest core's, per launch
    pipe_fills_by_launch: tuple[int, ...] = ()
    exposed_gm_reads_by_launch: tuple[int, ...] = ()
    v_barriers_max_core: int = 0
    dma_ops_max_core: int = 0
    # the workspace's host-to-device traffic per step (csrc/npu/lars_resident.h): before the
    # resident workspace, all of it every step; now what a step sends to a new buffer (the first
    # step) and to the buffer of the step before, same model and lr (steady), with the device-side
    # zeroing of the cores' flags
    upload_first_bytes: int = 0
    upload_steady_bytes: int = 0
    upload_steady_zeroed: int = 0
    upload_whole_seconds: float = 0.0  # one copy of the whole workspace
    upload_steady_seconds: float = 0.0

    @property
    def bytes_per_param(self) -> float:
        return self.dma_bytes / max(self.params, 1)

    @property
    def excess_bytes(self) -> int:
        return self.dma_bytes - IDEAL_FP32_BYTES_PER_PARAM * self.params


def core_seconds(
    counts: np.ndarray, fields: dict[str, int], cores: int, *, latency: bool = True
) -> np.ndarray:
    """The model's time of every core in every launch, (launches, cores), from the emulation's
    counters (launches, cores, fields). Streaming: the core's DMA bytes at its share of HBM
    bandwidth when all cores stream at once; the vector work overlaps it (double buffering), so
    the longer of the two counts. With latency, added to it: a DMA latency per refill of an idle
    DMA pipe (the launch's first load, and the first after each time the scalar unit waited for a
    pipe: it issues everything, so nothing was queued meanwhile), a scalar GM read latency per
    read issued while idle so, and a V -> S round trip per one."""

    def c(field: str) -> np.ndarray:
        return counts[:, :, fields[field]].astype(np.float64)

    stream = (c("gm_to_ub_bytes") + c("ub_to_gm_bytes")) / (HBM_BYTES_PER_S / cores)
    vector = c("vector_elems") * 4 / VECTOR_BYTES_PER_CYCLE / CLOCK_HZ
    if not latency:
        return stream
    stalls = (
        c("pipe_fills") * DMA_LATENCY_S
        + c("exposed_gm_reads") * SCALAR_GM_READ_S
        + c("vs_round_trips") * VS_ROUND_TRIP_CYCLES / CLOCK_HZ
    )
    return np.maximum(stream, vector) + stalls


def step_cost(
    name: str, numels: list[int], *, cores: int = CORES_910B, first: bool = False
) -> StepCost:
    """Runs one fused fp32 step (momentum 0.9, every tensor adapted) of the kernels on the
    emulation over tensors of these sizes and returns what the counters say. What the kernels
    move and issue does not depend on the values, so every tensor is backed by the same
    zero-filled buffers (w, g, m: one each, as long as the largest tensor): the real shapes at a
    fraction of their memory. The tensors' values after the step are meaningless."""
    from ._ascend import step_args, workspace_upload
    from ._native import constants

    k = constants()

    C = loaded()
    n = len(numels)
    biggest = max(numels, default=0)
    w, g, m = (torch.zeros(max(biggest, 1)) for _ in range(3))
    ones = np.ones(n, dtype=np.uint8)
    step = step_args(
        w=np.full(n, w.data_ptr(), dtype=np.int64),
        g=np.full(n, g.data_ptr(), dtype=np.int64),
        m=np.full(n, m.data_ptr(), dtype=np.int64),
        numel=np.asarray(numels, dtype=np.int64),
        adapt=ones,
        has_m=ones,
        first=ones if first else np.zeros(n, dtype=np.uint8),
        nesterov=np.zeros(n, dtype=np.uint8),
        wd=np.full(n, 5e-5),
        lr=np.full(n, 0.1),
        mu=np.full(n, 0.9),
        dtype=0,
        mode=1,
        tile_sq=k.tile_square_sums,
        tile_up=k.tile_update,
        chunk_elems=k.chunk,
    )
    blob, layout = C.ascend_plan(step)
    first_up = workspace_upload(layout, None, blob)
    steady_up = workspace_upload(layout, blob.copy(), blob)  # a later step, nothing changed
    counts = C.emu_launch(
        blob, layout["n"], layout["num_chunks"], 0, True, True, cores, UB_BYTES, False, 0, True
    )  # (launches, cores, fields)
    f = {k: i for i, k in enumerate(C.emu_counter_fields)}
    dma = counts[:, :, f["gm_to_ub_bytes"]] + counts[:, :, f["ub_to_gm_bytes"]]
    per_launch = LAUNCH_HEAD_S + core_seconds(counts, f, cores).max(axis=1)

    def busiest(field: str) -> int:
        return int(counts[:, :, f[field]].max(axis=1).sum())

    def by_launch(field: str) -> tuple[int, ...]:
        return tuple(int(x) for x in counts[:, :, f[field]].max(axis=1))

    return StepCost(
        name=name,
        tensors=n,
        params=int(sum(numels)),
        cores=cores,
        launches=int(counts.shape[0]),
        dma_bytes=int(dma.sum()),
        workspace_bytes=int(layout["bytes"]),
        scalar_reads_max_core=busiest("scalar_gm_reads"),
        vector_instrs_max_core=busiest("vector_instrs"),
        queue_waits_max_core=busiest("queue_waits"),
        flag_waits_max_core=busiest("flag_waits"),
        model_seconds=float(core_seconds(counts, f, cores, latency=False).max(axis=1).sum()),
        scalar_reads_by_launch=by_launch("scalar_gm_reads"),
        latency_seconds=float(per_launch.sum()),
        latency_by_launch=tuple(float(x) for x in per_launch),
        vs_round_trips_by_launch=by_launch("vs_round_trips"),
        pipe_fills_by_launch=by_launch("pipe_fills"),
        exposed_gm_reads_by_launch=by_launch("exposed_gm_reads"),
        v_barriers_max_core=busiest("v_barriers"),
        dma_ops_max_core=busiest("dma_ops"),
        upload_first_bytes=int(first_up["bytes"]),
        upload_steady_bytes=int(steady_up["bytes"]),
        upload_steady_zeroed=int(steady_up["zeroed"]),
        upload_whole_seconds=upload_seconds(int(layout["bytes"]), 1),
        upload_steady_seconds=upload_seconds(int(steady_up["bytes"]), int(steady_up["copies"])),
    )


def upload_seconds(nbytes: int, ops: int) -> float:
    """The model's time of a step's workspace traffic: ``ops`` stream-ordered copies or
    zeroings moving ``nbytes`` from the host (stream-ordered before the kernels: not hidden)."""
    return ops * H2D_OP_S + nbytes / H2D_BYTES_PER_S


def _per_launch(values: tuple[int, ...] | tuple[float, ...], fmt: str = "{:,}") -> str:
    return " / ".join(fmt.format(v) for v in values)


def format_costs(costs: list[StepCost]) -> str:
    """The cost tables (docs/benchmarks.md, "The NPU cost model"): a model from the emulation's
    counters. The first is bandwidth only; the second adds the latency terms."""
    head = (
        "| set | tensors | params | launches | GM bytes/param | above 28 B/param | workspace "
        "(H2D) | scalar GM reads/core | vector instrs/core | queue+flag waits/core | model "
        "step at 1.6 TB/s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [
        f"| {c.name} | {c.tensors:,} | {c.params:,} | {c.launches} | {c.bytes_per_param:.3f} | "
        f"{c.excess_bytes:,} B | {c.workspace_bytes:,} B | {c.scalar_reads_max_core:,} | "
        f"{c.vector_instrs_max_core:,} | {c.queue_waits_max_core + c.flag_waits_max_core:,} | "
        f"{c.model_seconds * 1e6:,.0f} µs |"
        for c in costs
    ]
    lat_head = (
        "| set | V→S round trips/core | DMA pipe refills/core | exposed scalar GM reads/core | "
        "DMA ops/core | PipeBarrier<PIPE_V>/core | model step per launch | model step with "
        "latency |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lat_rows = [
        f"| {c.name} | {_per_launch(c.vs_round_trips_by_launch)} | "
        f"{_per_launch(c.pipe_fills_by_launch)} | {_per_launch(c.exposed_gm_reads_by_launch)} | "
        f"{c.dma_ops_max_core:,} | {c.v_barriers_max_core:,} | "
        f"{_per_launch(tuple(t * 1e6 for t in c.latency_by_launch), '{:,.0f}')} µs | "
        f"{c.latency_seconds * 1e6:,.0f} µs |"
        for c in costs
    ]
    up_head = (
        "| set | workspace (H2D per step before) | first step, resident | steady step, resident "
        "(+ zeroed on device) | model H2D, whole → resident | **model step with latency and "
        "H2D, whole → resident** |\n|---|---:|---:|---:|---:|---:|"
    )
    up_rows = [
        f"| {c.name} | {c.workspace_bytes:,} B | {c.upload_first_bytes:,} B | "
        f"{c.upload_steady_bytes:,} B (+ {c.upload_steady_zeroed:,} B) | "
        f"{c.upload_whole_seconds * 1e6:,.1f} → {c.upload_steady_seconds * 1e6:,.1f} µs | "
        f"**{(c.latency_seconds + c.upload_whole_seconds) * 1e6:,.0f} → "
        f"{(c.latency_seconds + c.upload_steady_seconds) * 1e6:,.0f} µs** |"
        for c in costs
    ]
    cores = costs[0].cores if costs else CORES_910B
    note = (
        f"\nA MODEL from lars_npu's AscendC emulation counters (one fused fp32 momentum step, "
        f"{cores} vector cores; per core: the busiest core, summed over the launches or per "
        "launch: square sums / λ / update), not a hardware measurement. First table: the busiest "
        f"core's DMA bytes per launch at {HBM_BYTES_PER_S / 1e12:.1f} TB/s / {cores}. Second: per "
        f"launch {LAUNCH_HEAD_S * 1e6:.0f} µs of launch head (documented) + the slowest core's "
        "max(DMA streaming, vector work at 256 B/cycle) + assumed latencies: "
        f"{DMA_LATENCY_S * 1e6:g} µs per DMA pipe refill, {SCALAR_GM_READ_S * 1e6:g} µs per "
        f"exposed scalar GM read, {VS_ROUND_TRIP_CYCLES} cycles at {CLOCK_HZ / 1e9:g} GHz per "
        "V→S round trip. Third: the workspace's host-to-device traffic per step, whole "
        "(before the resident workspace) and as the resident workspace sends it, at an assumed "
        f"{H2D_BYTES_PER_S / 1e9:g} GB/s + {H2D_OP_S * 1e6:g} µs per copy or zeroing, added to "
        "the latency model's step (the kernels' own figures are the same in both)."
    )
    tables = [head, *rows, "", lat_head, *lat_rows, "", up_head, *up_rows]
    return "\n".join(tables) + note
