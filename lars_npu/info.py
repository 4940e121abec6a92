"""``lars-npu info``: versions (lars_npu, python, torch, torch_npu, CANN), every backend and why a
missing one is missing, the native module's build options, the thread count."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

from . import __version__
from ._backends import all_backends
from ._backends._native import FALLBACK_COST, native, native_error, torch_npu, torch_npu_error

HELP = "versions, backends and why a missing one is missing, build options"
DESCRIPTION = (
    "Versions (lars_npu, python, torch, torch_npu, CANN), every backend and why a missing one "
    "is missing, the native module's build options, thread count."
)

# Where a CANN toolkit says its version (relative to its root), newest layout first.
_CANN_ROOT_VARS = ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH", "ASCEND_CANN_PACKAGE_PATH")
_CANN_DEFAULT_ROOT = "/usr/local/Ascend/ascend-toolkit/latest"
_CANN_VERSION_FILES = (
    "*-linux/ascend_toolkit_install.info",
    "compiler/version.info",
    "runtime/version.info",
    "version.info",
)


def cann_version() -> tuple[str | None, str]:
    """The installed CANN toolkit's version and where it was read, or (None, why not).

    Looks at ``$ASCEND_TOOLKIT_HOME``, ``$ASCEND_HOME_PATH``, ``$ASCEND_CANN_PACKAGE_PATH`` and
    the default install path, for the ``version=`` line of the toolkit's info files."""
    roots = [os.environ[v] for v in _CANN_ROOT_VARS if os.environ.get(v)]
    roots.append(_CANN_DEFAULT_ROOT)
    for root in dict.fromkeys(roots):
        base = Path(root)
        if not base.is_dir():
            continue
        for pattern in _CANN_VERSION_FILES:
            for f in sorted(base.glob(pattern)):
                try:
                    text = f.read_text(errors="replace")
                except OSError:
                    continue
                m = re.search(r"^\s*version\s*=\s*(\S+)", text, re.IGNORECASE | re.MULTILINE)
                if m:
                    return m.group(1), str(f)
        return None, f"no version file under {base}"
    return None, "no CANN toolkit found (set ASCEND_TOOLKIT_HOME or source CANN's set_env.sh)"


def _real_runner() -> dict[str, Any]:
    """Whether the `real` AscendC runner (LARS_NPU_EMU_RUNNER=real, docs/emulation.md) is built:
    {"built": bool, "detail": the library's path, or why not}."""
    from ._backends.emu import real_runner

    built, detail = real_runner()
    return {"built": built, "detail": detail}


def info_dict() -> dict[str, Any]:
    C = native()
    backends = {}
    for name, b in all_backends().items():
        ok, why = b.available()
        backends[name] = {"available": ok, "reason": why}
    npu = torch_npu()
    cann, cann_where = cann_version()
    return {
        "lars_npu": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_npu": getattr(npu, "__version__", None) if npu else None,
        "torch_npu_reason": "" if npu else torch_npu_error(),
        "cann": cann,
        "cann_source": cann_where,
        "backends": backends,
        "native_build": dict(C.build_info()) if C else None,
        "native_reason": "" if C else native_error(),
        "asc_real_runner": _real_runner(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def print_info(d: dict[str, Any]) -> None:
    print(f"lars_npu {d['lars_npu']}  (python {d['python']}, torch {d['torch']})")
    print(f"torch_npu: {d['torch_npu'] or 'not available — ' + d['torch_npu_reason']}")
    if d["cann"]:
        print(f"CANN toolkit: {d['cann']}  ({d['cann_source']})")
    else:
        print(f"CANN toolkit: not found — {d['cann_source']}")
    nb = d["native_build"]
    if nb:
        print(
            f"native module lars_npu._C: {nb.get('compiler')}, OpenMP={nb.get('openmp')}, "
            f"build={nb.get('build_type')}, torch={nb.get('torch')}, CANN={nb.get('cann')}"
        )
        shown = {"compiler", "openmp", "build_type", "torch", "cann"}
        rest = ", ".join(f"{k}={v}" for k, v in nb.items() if k not in shown)
        if rest:
            print(f"  build options: {rest}")
    else:
        print(f"native module lars_npu._C: not available — {d['native_reason']}")
        print(f"  {FALLBACK_COST}")
    real = d["asc_real_runner"]
    state = "built" if real["built"] else "not built"
    print(f"real AscendC runner (LARS_NPU_EMU_RUNNER=real): {state} — {real['detail']}")
    print(f"threads (torch.get_num_threads): {d['torch_threads']} of {d['cpu_count']} CPUs")
    print("backends:")
    for name, b in d["backends"].items():
        state = "available" if b["available"] else f"unavailable: {b['reason']}"
        print(f"  {name:<6} {state}")


def add_arguments(p: Any) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def run_cli(args: Any) -> int:
    d = info_dict()
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print_info(d)
    return 0
