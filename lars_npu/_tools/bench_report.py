"""The results of ``lars-npu bench``: its rows, the machine they were measured on, the table
and the JSON."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .._backends._native import native


@dataclass
class Row:
    set: str
    tensors: int
    params: int
    method: str
    ms: float | None
    speedup_of_fused: float | None
    gbs_28: float | None
    of_triad: float | None
    peak_extra_mb: float | None
    note: str = ""


@dataclass
class Result:
    machine: dict[str, Any]
    triad_gbs: float
    rows: list[Row] = field(default_factory=list)


def machine_info() -> dict[str, Any]:
    C = native()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "llc_bytes": int(C.last_level_cache_bytes()) if C else None,
        "native": dict(C.build_info()) if C else None,
    }


def format_table(res: Result) -> str:
    llc = res.machine.get("llc_bytes")
    llc_txt = f"{llc / 2**20:.0f} MiB" if llc else "unknown"
    head = (
        f"threads={res.machine['threads']}  LLC={llc_txt}  "
        f"triad={res.triad_gbs:.1f} GB/s (a = b + s*c, fp32, 12 B/elem; with one process per"
        f" set, each row's note gives its own process's triad, used for /triad)\n"
    )
    cols = (
        f"{'set':<11}{'method':<40}{'ms/step':>10}{'us/tensor':>10}{'fused x':>9}"
        f"{'GB/s@28B':>10}{'/triad':>8}{'peak+MB':>9}  note"
    )
    lines = [head, cols, "-" * len(cols)]

    def f(v: float | None, fmt: str) -> str:
        width = int(fmt.split(".")[0])
        return format(v, fmt) if v is not None else "-".rjust(width)

    for r in res.rows:
        lines.append(
            f"{r.set:<11}{r.method:<40}{f(r.ms, '10.2f')}"
            f"{f(None if r.ms is None else 1e3 * r.ms / r.tensors, '10.2f')}"
            f"{f(r.speedup_of_fused, '9.2f')}"
            f"{f(r.gbs_28, '10.2f')}{f(r.of_triad, '8.2f')}{f(r.peak_extra_mb, '9.1f')}"
            f"  {r.note}"
        )
    return "\n".join(lines)


def to_json(res: Result) -> dict[str, Any]:
    return {
        "machine": res.machine,
        "triad_gbs": res.triad_gbs,
        "rows": [asdict(r) for r in res.rows],
    }
