"""Shared fixtures: which backends run here, and helpers to compare with the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import settings

import lars_npu
from lars_npu._backends import all_backends
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


def requires_native() -> pytest.MarkDecorator:
    return pytest.mark.skipif("cpu" not in BACKENDS, reason="lars_npu._C is not built")
