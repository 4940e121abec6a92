"""What ``lars-npu bench`` measures besides the step itself: a median time, a STREAM-like triad,
and the peak resident memory of one call (Linux only: ``None`` elsewhere)."""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def triad_gbs(repeats: int, elements: int = 1 << 25) -> float:
    """STREAM-like triad a = b + s·c on fp32 (12 bytes per element counted), torch threads."""
    a = torch.empty(elements)
    b = torch.rand(elements)
    c = torch.rand(elements)
    t = median_time(lambda: torch.add(b, c, alpha=3.0, out=a), repeats)
    return 12 * elements / t / 1e9


def _status_kb(key: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS: resident now, VmHWM: the peak)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def peak_extra_mb(fn: Callable[[], object]) -> float | None:
    """Peak resident memory during ``fn()`` above the resident memory before it, in MB.

    Freed memory is first made to leave the process at once (glibc: a fixed 128 KiB mmap
    threshold and a trim), so that resident memory tracks live allocations; then the kernel's
    peak (VmHWM) is reset through /proc/self/clear_refs."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, no dynamic raising
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident size
    except OSError:
        return None
    before = _status_kb("VmRSS")
    fn()
    peak = _status_kb("VmHWM")
    if before is None or peak is None:
        return None
    return max(0.0, (peak - before) / 1024)
