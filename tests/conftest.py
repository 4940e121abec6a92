"""Shared fixtures: which backends run here, and the helpers several test files use (comparing
with the reference, the skip mark for the native module, raw pointers for the kernels' C API, a
free local port)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from hypothesis import settings

import lars_npu
from lars_npu._backends import all_backends
from lars_npu._backends._native import native
from lars_npu.check import atol, compare, np64, rtol

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile("ci")

# Backends that take every dtype on CPU tensors; `emu` (the AscendC kernels on our emulation,
# fp32/fp16 only) has its own tests (test_emu_kernels.py, test_emu_backend.py).
ALL_BACKENDS = lars_npu.available_backends()
# the backends that take CPU tensors: on an Ascend host `npu` is available but runs NPU tensors
_CPU = torch.device("cpu")
BACKENDS = [b for b in ALL_BACKENDS if b != "emu" and all_backends()[b].supports(_CPU)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def pytest_report_header(config: pytest.Config) -> str:
    return f"lars_npu backends available: {ALL_BACKENDS}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


@pytest.fixture
def one_rank() -> Iterator[None]:
    """A one-process gloo group (world size 1) for the test's duration."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's LARS_NPU_BACKEND must not leak into tests that rely on the default choice.
    monkeypatch.delenv("LARS_NPU_BACKEND", raising=False)


def assert_matches_reference(
    got: torch.Tensor, ref: np.ndarray, scale: np.ndarray, dtype: torch.dtype
) -> None:
    """Backend result vs the float64 reference, at the dtype's tolerance (see lars_npu.check:
    a few roundings of the dtype times the size of the terms λ·(|g| + wd·|w|))."""
    c = compare(np64(got), ref, scale, rtol(dtype), atol(dtype))
    assert c.ok, f"max_abs={c.max_abs:.3e} max_rel={c.max_rel:.3e} rtol={rtol(dtype)}"


# tests that call the native module (lars_npu._C) directly
needs_native = pytest.mark.skipif(native() is None, reason="lars_npu._C is not built")


def ptrs(ts: list[torch.Tensor | None]) -> np.ndarray:
    """The tensors' data pointers as the kernels' C API takes them (0 for None)."""
    return np.array([0 if t is None else t.data_ptr() for t in ts], dtype=np.int64)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a process group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- LARS_NPU_EMU_RUNNER=real: the emu tests on the real AscendC runner (docs/emulation.md) -------
# The `emu` backend follows the variable by itself (lars_npu/_backends/emu.py); the tests that call
# the emulation's launch directly (native().emu_launch) are sent to the real runner here, so that
# the same test files run the same kernels through the real AscendC headers. What only the
# emulation has is skipped with the reason, as the emulation's job:
#   - its refusal mini-kernels (_testing.emu_selftest: queue and buffer misuse, misaligned or
#     partial-block DataCopy, stale scalar reads of global memory, UB beyond 184 KiB, a kernel not
#     restoring the floating-point mode, pipe-order races), its cross-core probe and its fp16
#     probe: they are built against the emulation only (the real runner's own deliberately wrong
#     kernels and fp16 probe are in tests/test_asc_real.py);
#   - its per-core counters (count=True, the cost model) and a Unified Buffer other than A2's
#     192 KiB (ub_bytes: the real library's buffer is fixed), and its staging runner.
REAL_RUNNER = os.environ.get("LARS_NPU_EMU_RUNNER", "").strip() == "real"
_UB_A2 = 192 * 1024


def pytest_configure(config: pytest.Config) -> None:
    if REAL_RUNNER:
        from lars_npu._backends.emu import real_runner

        built, why = real_runner()
        if not built:
            raise pytest.UsageError(f"LARS_NPU_EMU_RUNNER=real: {why}")


def _on_real_runner() -> bool:  # a test may pick another runner for itself (monkeypatch.setenv)
    return os.environ.get("LARS_NPU_EMU_RUNNER", "").strip() == "real"


def _emulation_only(original: Any, why: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        if _on_real_runner():
            pytest.skip(f"the emulation's job, not the real runner's: {why}")
        return original(*args, **kwargs)

    return call


@pytest.fixture(autouse=True)
def _real_runner_for_direct_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    C = native()
    if not REAL_RUNNER or C is None or not hasattr(C, "emu_launch"):
        return
    from lars_npu._backends.emu import real_launch

    emulation_launch = C.emu_launch

    def emu_launch(
        workspace: np.ndarray, n: int, num_chunks: int, dtype: int, run_square_sums: bool,
        run_update: bool, block_dim: int, ub_bytes: int, staged: bool = False,
        core_order: int = 0, count: bool = False, saturation: bool = True, **emulation: Any,
    ) -> Any:  # fmt: skip
        if not _on_real_runner():
            return emulation_launch(
                workspace, n, num_chunks, dtype, run_square_sums, run_update, block_dim,
                ub_bytes, staged, core_order, count, saturation=saturation, **emulation,
            )  # fmt: skip
        # auto_sync=True is the default launch; False asks for the emulation's auto-sync-off
        # checks, which a sequential runner has nothing to do with
        if emulation.pop("auto_sync", True) is False:
            pytest.skip("the emulation's job: its auto-sync-off checks (auto_sync=False)")
        if emulation:  # options of the emulation's own checks (e.g. its pipe-order modes)
            pytest.skip(f"the emulation's job: emu_launch({', '.join(sorted(emulation))}=...)")
        if count:
            pytest.skip("the emulation's job: per-core counters (the real runner counts nothing)")
        if staged:
            pytest.skip("the emulation's job: its staging runner")
        if ub_bytes != _UB_A2:
            pytest.skip("the emulation's job: a Unified Buffer other than A2's 192 KiB")
        real_launch(
            workspace, n, num_chunks, dtype, run_square_sums, run_update, block_dim, core_order,
            saturation,
        )  # fmt: skip
        return None

    monkeypatch.setattr(C, "emu_launch", emu_launch)
    probes = {
        "emu_cross_core_probe": "its cross-core probe kernel (built against the emulation only)",
    }
    for name, why in probes.items():
        if hasattr(C, name):
            monkeypatch.setattr(C, name, _emulation_only(getattr(C, name), why))
    testing = getattr(C, "_testing", None)
    for name, why in {
        "emu_selftest": "its refusal mini-kernels (built against the emulation only)",
        "emu_fp16_probe": "its fp16 probe (the real runner's is in tests/test_asc_real.py)",
    }.items():
        if testing is not None and hasattr(testing, name):
            monkeypatch.setattr(testing, name, _emulation_only(getattr(testing, name), why))
