"""The backend registry: the one place that decides which implementation runs.

Choice, per call (docs/semantics.md): an explicit ``backend=`` name wins; with ``"auto"`` the
environment variable ``LARS_NPU_BACKEND`` (read at call time) decides when set; otherwise the
tensors' device does: ``cpu`` → the C++ kernels (NumPy reference when ``_C`` is absent), ``npu`` →
the AscendC kernels when ``_C`` was built with CANN and torch_npu imports, any other device (or an
npu without them) → plain torch ops. `emu` (the AscendC kernels on our host emulation) is never
chosen by default. Asking for an unavailable backend is an error, never a silent fallback.
"""

from __future__ import annotations

import os
import warnings

import torch

from ._native import FALLBACK_COST, native_error
from .base import Backend, Hyper, MultiResult
from .cpu import CpuBackend
from .emu import EmuBackend
from .npu import NpuBackend
from .numpy_ import NumpyBackend
from .torch_ import TorchBackend

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "Hyper",
    "MultiResult",
    "all_backends",
    "available_backends",
    "get_backend",
    "resolve",
    "warn_reference_fallback",
]

ENV_VAR = "LARS_NPU_BACKEND"


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here (or not on these tensors)."""


_REGISTRY: dict[str, Backend] = {
    b.name: b for b in (NumpyBackend(), TorchBackend(), CpuBackend(), NpuBackend(), EmuBackend())
}


def all_backends() -> dict[str, Backend]:
    """Every backend this build knows, available or not, by name."""
    return dict(_REGISTRY)


def available_backends() -> list[str]:
    """Names of the backends usable on this machine, e.g. ``["numpy", "torch", "cpu"]``."""
    return [name for name, b in _REGISTRY.items() if b.available()[0]]


def get_backend(name: str) -> Backend:
    """The backend called ``name``: ValueError if unknown, :class:`BackendUnavailableError` if it
    cannot run on this machine."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown lars_npu backend {name!r}; known: {sorted(_REGISTRY)}")
    b = _REGISTRY[name]
    ok, why = b.available()
    if not ok:
        raise BackendUnavailableError(f"lars_npu backend {name!r} is not available: {why}")
    return b


_warned_fallback = False


def warn_reference_fallback(stacklevel: int = 2) -> None:
    """Warn once per process that CPU tensors fall back to the NumPy reference because ``_C`` is
    missing, with the reason and the cost. Silent when the user turned native off on purpose."""
    global _warned_fallback
    if _warned_fallback or _REGISTRY["cpu"].available()[0]:
        return
    if os.environ.get("LARS_NPU_DISABLE_NATIVE") == "1":
        return  # asked for: LARS_NPU_DISABLE_NATIVE=1 is the user's own word
    _warned_fallback = True
    warnings.warn(
        f"lars_npu: the native module is missing ({native_error() or 'unknown reason'}); "
        f"{FALLBACK_COST}",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )


def _by_device(device: torch.device) -> Backend:
    if device.type == "cpu":
        cpu = _REGISTRY["cpu"]
        if cpu.available()[0]:
            return cpu
        warn_reference_fallback(stacklevel=3)
        return _REGISTRY["numpy"]
    npu = _REGISTRY.get("npu")
    if device.type == "npu" and npu is not None and npu.available()[0]:
        return npu
    return _REGISTRY["torch"]


def resolve(device: torch.device, requested: str = "auto") -> Backend:
    """The backend that runs tensors on ``device``, following the rules in the module docstring."""
    if not isinstance(requested, str):
        raise TypeError(f"backend must be a str, got {type(requested).__name__}")
    name = requested
    source = "backend="
    if name == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if not env or env == "auto":
            return _by_device(device)
        name, source = env, f"{ENV_VAR}="
    try:
        b = get_backend(name)
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(f"{exc} (asked for by {source}{name})") from None
    except ValueError as exc:
        raise ValueError(f"{exc} (asked for by {source}{name})") from None
    if not b.supports(device):
        raise BackendUnavailableError(
            f"lars_npu backend {name!r} (asked for by {source}{name}) cannot run tensors on "
            f"device {device}"
        )
    return b
