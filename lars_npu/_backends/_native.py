"""The one place that imports optional native parts: ``lars_npu._C`` and ``torch_npu``.

Each import is tried once; the module (or ``None``) and the reason for a failure are remembered,
so a missing part never breaks ``import lars_npu`` and ``lars-npu info`` can say why it is missing.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from types import ModuleType


@cache
def _load_C() -> tuple[ModuleType | None, str]:
    if os.environ.get("LARS_NPU_DISABLE_NATIVE") == "1":
        return None, "disabled by LARS_NPU_DISABLE_NATIVE=1"
    try:
        mod = importlib.import_module("lars_npu._C")
    except ImportError as exc:
        return None, f"lars_npu._C was not built or cannot load ({exc})"
    return mod, ""


def native() -> ModuleType | None:
    """The compiled extension ``lars_npu._C``, or ``None`` when it is absent."""
    return _load_C()[0]


def native_error() -> str:
    """Why :func:`native` is ``None`` ('' when it is available)."""
    return _load_C()[1]


@cache
def _load_torch_npu() -> tuple[ModuleType | None, str]:
    # torch_npu needs CANN; on a host without it, importing fails in several ways (DESIGN.md §2).
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
