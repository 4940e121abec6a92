"""The one place that imports optional native parts: ``lars_npu._C`` and ``torch_npu``.

Each import is tried once; the module (or ``None``) and the reason for a failure are remembered,
so a missing part never breaks ``import lars_npu`` and ``lars-npu info`` can say why it is missing.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import torch


@cache
def _load_C() -> tuple[ModuleType | None, str]:
    if os.environ.get("LARS_NPU_DISABLE_NATIVE") == "1":
        return None, "disabled by LARS_NPU_DISABLE_NATIVE=1"
    built_with = _built_with_torch()
    if built_with is not None and built_with != torch.__version__:
        return None, (
            f"lars_npu._C was built against torch {built_with} and this is torch "
            f"{torch.__version__}: its operators link torch's C++ library, so it must be rebuilt "
            "(pip install --force-reinstall --no-deps lars-npu, or pip install -e . again)"
        )
    if (Path(__file__).resolve().parent.parent / "_C_needs_torch_npu.txt").exists():
        # a CANN build whose operators have PrivateUse1 kernels links libtorch_npu.so: load it
        # first (torch's device-backend autoload may be off); without it the module cannot load
        npu = torch_npu()
        if npu is None:
            return None, (
                "lars_npu._C was built with the NPU kernels of its operators and needs torch_npu, "
                f"which does not import here: {torch_npu_error()}"
            )
    try:
        mod = importlib.import_module("lars_npu._C")
    except ImportError as exc:
        recorded = _build_reason()
        if recorded:
            return None, f"lars_npu._C was not built: {recorded}"
        return None, f"lars_npu._C was not built or cannot load ({exc})"
    return mod, ""


def _built_with_torch() -> str | None:
    """The torch version setup.py built ``_C`` against (``lars_npu/_C_torch_version.txt``), or
    None when no build recorded one."""
    try:
        text = (Path(__file__).resolve().parent.parent / "_C_torch_version.txt").read_text()
    except OSError:
        return None
    return text.strip() or None


def _build_reason(limit: int = 600) -> str:
    """What setup.py recorded when it installed the package without ``_C`` (the first paragraph
    of ``lars_npu/_C_not_built.txt``, on one line), or '' when it recorded nothing."""
    try:
        text = (Path(__file__).resolve().parent.parent / "_C_not_built.txt").read_text()
    except OSError:
        return ""
    first = text.strip().split("\n\n", 1)[0]
    line = " ".join(part.strip() for part in first.splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def native() -> ModuleType | None:
    """The compiled extension ``lars_npu._C``, or ``None`` when it is absent."""
    return _load_C()[0]


def loaded() -> Any:
    """``lars_npu._C`` for code that runs only once a backend needing it was found available
    (typed ``Any``: the extension has no type information); a RuntimeError when it is absent."""
    C = native()
    if C is None:
        raise RuntimeError(f"lars_npu._C is not available: {native_error()}")
    return C


def loaded_torch_npu() -> Any:
    """torch_npu for code that runs only on the npu backend; a RuntimeError when absent."""
    npu = torch_npu()
    if npu is None:
        raise RuntimeError(f"torch_npu is not available: {torch_npu_error()}")
    return npu


def native_error() -> str:
    """Why :func:`native` is ``None`` ('' when it is available)."""
    return _load_C()[1]


@dataclass(frozen=True)
class BuildConstants:
    """Numbers the C++ defines once (csrc/cpu/lars_cpu.h, csrc/cpu/dtypes.h,
    csrc/ascendc/lars_tiling.h, lars_host_plan.h), as ``_C.build_info()`` reports them."""

    chunk: int  # elements per chunk of every kernel's work list
    dtype_codes: dict[torch.dtype, int]  # the kernels' dtype codes
    tile_square_sums: int  # AscendC: elements per UB tile of the square-sums kernel
    tile_update: int  # AscendC: elements per UB tile of the update kernel
    flag_slots: int  # AscendC: non-finite flag slots in the workspace (max cores per launch)
    gm_align: int  # AscendC: byte alignment of every tensor's base address


_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def constants() -> BuildConstants:
    """The :class:`BuildConstants` of the loaded ``_C`` (every user of them needs ``_C``)."""
    C = native()
    if C is None:
        raise RuntimeError(f"lars_npu._C is not available: {native_error()}")
    return _constants(C)


@cache
def _constants(C: ModuleType) -> BuildConstants:
    b = dict(C.build_info())
    return BuildConstants(
        chunk=int(b["chunk_elements"]),
        dtype_codes={_DTYPES[k]: int(v) for k, v in dict(b["dtype_codes"]).items()},
        tile_square_sums=int(b["ascend_tile_square_sums"]),
        tile_update=int(b["ascend_tile_update"]),
        flag_slots=int(b["ascend_flag_slots"]),
        gm_align=int(b["ascend_gm_align"]),
    )


# What running CPU tensors without ``_C`` costs, said wherever that happens (bench: 30–100× the
# fused C++ step, README "Benchmarks").
FALLBACK_COST = (
    "CPU tensors run on the NumPy reference, 30-100x slower than the fused C++ kernel; rebuild "
    "with a C++17 compiler and cmake (pip install --force-reinstall --no-deps .) and check with "
    "`lars-npu info`"
)


@cache
def _load_torch_npu() -> tuple[ModuleType | None, str]:
    # torch_npu needs CANN; without it, importing fails in several ways (docs/architecture.md).
    try:
        mod = importlib.import_module("torch_npu")
    except (ImportError, OSError, RuntimeError) as exc:
        return None, f"torch_npu unavailable ({type(exc).__name__}: {exc})"
    return mod, ""


def torch_npu() -> ModuleType | None:
    """The ``torch_npu`` module when it imports, else ``None``."""
    return _load_torch_npu()[0]


def torch_npu_error() -> str:
    return _load_torch_npu()[1]


# -- threads ---------------------------------------------------------------------------------
# `_C` and torch share ONE OpenMP runtime: torch's wheel loads its libgomp.so.1 first (lars_npu
# imports torch before `_C`), and the loader binds `_C`'s libgomp.so.1 to it by soname (tested:
# tests/test_install.py). GNU OpenMP's thread pool does not survive fork(): in a forked child the
# next multi-threaded region hangs (torch's own ops as well; its DataLoader workers therefore run
# torch.set_num_threads(1)). So in a forked child our kernels run on one thread, and say so once.
_forked_child = False
_warned_fork = False


def _after_fork_in_child() -> None:
    global _forked_child
    _forked_child = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def kernel_threads() -> int:
    """Threads for the C++ kernels: ``torch.get_num_threads()``, or 1 in a forked child."""
    global _warned_fork
    if not _forked_child:
        return torch.get_num_threads()
    if not _warned_fork and torch.get_num_threads() > 1:
        _warned_fork = True
        warnings.warn(
            "lars_npu: in a process made by fork() the CPU kernels run on one thread (GNU "
            "OpenMP's thread pool does not survive fork; a multi-threaded region would hang, "
            "torch's own ops too). Start workers with the 'spawn' method for multi-threaded work.",
            RuntimeWarning,
            stacklevel=3,
        )
    return 1
