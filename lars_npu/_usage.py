"""Checks of command-line input made before any work starts (``lars-npu demo`` / ``bench``).

Each raises :class:`UsageError` with a one-line message naming the flag; the command prints it on
stderr and exits with status 2. Output places are probed for real (a directory created, a file
opened), not judged by ``os.access``, which says yes to root for almost anything.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "UsageError",
    "bounded_float",
    "bounded_int",
    "max_threads",
    "probe_device",
    "writable_dir",
    "writable_file",
]


class UsageError(ValueError):
    """A user error on the command line: one line on stderr, exit status 2."""


def bounded_int(flag: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise UsageError(f"{flag} must be between {lo} and {hi}, got {value}")
    return value


def bounded_float(flag: str, value: float, *, positive: bool = True) -> float:
    """Finite and > 0 (``positive``) or >= 0."""
    ok = math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        raise UsageError(f"{flag} must be finite and {'> 0' if positive else '>= 0'}, got {value}")
    return value


def max_threads() -> int:
    """The most threads a command accepts: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _why(exc: OSError, p: Path) -> str:
    for parent in p.parents:  # mkdir's "File exists" means: a file stands where a folder must
        if parent.exists():
            if not parent.is_dir():
                return f"{str(parent)!r} is not a directory"
            break
    return exc.strerror or type(exc).__name__


def writable_dir(flag: str, path: str | os.PathLike[str], files: tuple[str, ...] = ()) -> Path:
    """Prove a file can be written in directory ``path`` (created for the probe with its missing
    parents, then removed again: the probe leaves no trace); each name in ``files`` (written
    there later) must not be a directory."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {str(p)!r} exists and is not a directory")
    made = [d for d in (p, *p.parents) if not d.exists()]
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {str(p)!r} is not a writable directory: {_why(exc, p)}") from None
    finally:
        for d in made:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
    for name in files:
        if (p / name).is_dir():
            raise UsageError(f"{flag}: {str(p / name)!r} is a directory; cannot write it")
    return p


def writable_file(flag: str, path: str | os.PathLike[str]) -> Path:
    """Prove ``path`` can be written (an existing file is not changed; a file or folders made by
    the probe are removed again)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {str(p)!r} is a directory, not a file")
    made = [d for d in (p, *p.parents) if not d.exists()]
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a"):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {str(p)!r} cannot be written: {_why(exc, p)}") from None
    finally:
        for i, d in enumerate(made):  # deepest first: the file, then its new folders
            with contextlib.suppress(OSError):
                d.unlink() if i == 0 else d.rmdir()
    return p


def probe_device(flag: str, device: str) -> torch.device:
    """A device that torch can compute on here and read a result back from (so no ``meta``).
    An Ascend ``npu`` needs torch_npu (and CANN) first: without it, one line saying so."""
    if device.split(":")[0].strip().lower() == "npu":
        from ._backends._native import torch_npu, torch_npu_error

        if torch_npu() is None:
            why = " ".join(torch_npu_error().split())  # one line, whatever the import said
            raise UsageError(
                f"{flag} {device!r}: {why}; an Ascend NPU needs the CANN toolkit "
                "and torch_npu (the release for your torch and CANN; see docs/ascend.md)"
            )
    try:
        dev = torch.device(device)
        t = torch.ones(2, device=dev)
        float((t * 2).sum().item())
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"{flag} {device!r} cannot run here: {first}") from None
    return dev


def progress_flags(
    p: Any, off: str = "never", on: str = "always show progress bars (default: only on a terminal)"
) -> None:
    """--progress / --no-progress (default: progress bars only on a terminal)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress", dest="progress", action="store_const", const=True, default=None, help=on
    )
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False, help=off)
