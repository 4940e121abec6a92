"""Shared fixtures: which backends run here, and the helpers several test files use (comparing
with the reference, the skip mark for the native module, raw pointers for the kernels' C API, a
free local port)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

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
