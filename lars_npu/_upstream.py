"""Defects and gaps of the running torch that decide whether a distributed run can be trusted.

Each function answers for the torch it runs on and returns ``None`` when all is well, or a
message that says what is wrong, on which torch versions, and what to do. Where the feature can
be tested directly it is (a version number is only the fallback), so a patched or backported
build gets the answer of what it does.

Measured on torch 2.6.0, 2.7.1, 2.8.0, 2.9.0, 2.13.0 and 2.15.0 (CPU, gloo, 2 and 4 ranks):

- gloo's ``reduce_scatter_tensor`` ignores ``ReduceOp.AVG`` and returns the sum on 2.6, 2.7
  and 2.8; 2.9 and later average (pytorch/pytorch#162338). FSDP2 (``fully_shard``) reduces fp32
  and bf16 gradients with that op, so on 2.7 and 2.8 every gradient it hands the optimizer over
  a gloo group is world_size times the mean: plain SGD is mis-scaled as much as LARS.
  :func:`gloo_avg_defect`, :func:`fsdp2_gloo_defect`, :func:`dtensor_defects`.
- ``torch.cpu.Stream`` has no ``record_event`` on 2.6, and FSDP2 records an event on its
  reduce-scatter stream in every backward, so FSDP2 on CPU parameters fails with an
  AttributeError in the first backward; it runs from 2.7 on. :func:`cpu_fsdp2_stream_gap`.
- torch optimizers take ``(name, parameter)`` pairs (and keep ``param_names`` in their groups)
  from 2.6 on: lars_npu's floor. :func:`torch_floor_error`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch

from ._compat import gloo_reduce_scatter_averages, optimizers_take_names
from ._engines import is_dtensor

__all__ = [
    "cpu_fsdp2_stream_gap",
    "dtensor_defects",
    "fsdp2_gloo_defect",
    "gloo_avg_defect",
    "gloo_reduce_scatter_averages",
    "torch_floor_error",
]

# the first torch whose gloo reduce-scatter averages: the fallback when that cannot be tested
GLOO_AVG_FIXED = (2, 9)


def _release(version: str) -> tuple[int, ...]:
    """``"2.8.0+cu128"`` -> ``(2, 8, 0)``: the leading dotted numbers of a version string."""
    m = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(x) for x in m.group(0).split(".")) if m else ()


def torch_floor_error() -> str | None:
    """A message when this torch is older than lars_npu's floor, torch 2.6; else ``None``.

    Tested by the feature the floor is for: LARS's default filter (MindSpore's, by name) reads
    each parameter's name from the inner optimizer's groups, which torch optimizers keep only
    since 2.6, when they began to take ``model.named_parameters()``."""
    if optimizers_take_names():
        return None
    return (
        f"lars_npu needs torch >= 2.6, and this is torch {torch.__version__}: LARS reads each "
        "parameter's name from the inner optimizer's param groups (torch.optim.SGD("
        "model.named_parameters(), ...)), which torch optimizers support only from 2.6 on; "
        "upgrade torch (pip install 'torch>=2.6')"
    )


def cpu_fsdp2_stream_gap() -> str | None:
    """A message when FSDP2 (``fully_shard``) cannot run on CPU parameters with this torch
    (``torch.cpu.Stream`` has no ``record_event``: torch 2.6); else ``None``."""
    if hasattr(torch.cpu.Stream, "record_event"):
        return None
    return (
        f"torch {torch.__version__}: torch.cpu.Stream has no record_event, which FSDP2 "
        "(fully_shard) calls in every backward, so FSDP2 on CPU parameters fails in the first "
        "backward (AttributeError: 'Stream' object has no attribute 'record_event'); CPU FSDP2 "
        "needs torch >= 2.7 (and >= 2.9 on gloo, whose reduce-scatter sums where FSDP2 asks for "
        "the mean before that). On this torch, train on CPU with DDP or with "
        "lars_npu.distributed.flat_shard instead"
    )


def _gloo_serves(group: Any, device: torch.device) -> bool:
    """Whether ``group``'s collectives on tensors of ``device`` go through gloo."""
    import torch.distributed as dist

    name = str(dist.get_backend(group))
    if name == "gloo":
        return True
    by_device = dict(part.split(":", 1) for part in name.split(",") if ":" in part)
    return by_device.get(device.type) == "gloo"


def _gloo_sums(world: int | None) -> str:
    """The message of the gloo defect, for a group of ``world`` ranks (``None``: any group)."""
    if world is None:
        over, scale = "over a gloo group of N ranks", "N times"
    else:
        over, scale = f"over this gloo group of {world} ranks", f"{world}x"
    return (
        f"torch {torch.__version__}: gloo's reduce_scatter_tensor ignores ReduceOp.AVG and "
        "returns the sum (torch 2.6 to 2.8, fixed in 2.9; pytorch/pytorch#162338). FSDP2 "
        f"(fully_shard) reduces fp32 and bf16 gradients with AVG, so {over} every gradient it "
        f"gives the optimizer is {scale} the mean: any optimizer, plain SGD too, steps on it, and "
        "LARS's weight decay term is off by as much. Upgrade torch to 2.9 or newer; on torch "
        "2.8, call set_force_sum_reduction_for_comms(True) on every module fully_shard returned "
        "(FSDP2 then sums and divides by itself); or reduce with another backend (nccl, hccl)"
    )


def _gloo_averages() -> bool:
    """:func:`gloo_reduce_scatter_averages`, or where that cannot be tested, the version rule."""
    averages = gloo_reduce_scatter_averages()
    if averages is None:
        return _release(torch.__version__) >= GLOO_AVG_FIXED
    return averages


def gloo_avg_defect() -> str | None:
    """A message when this torch's gloo reduce-scatter sums where it is asked to average (what
    that does to FSDP2 on gloo, and what to do); else ``None``. About no group in particular:
    :func:`fsdp2_gloo_defect` says whether a given group is concerned."""
    return None if _gloo_averages() else _gloo_sums(None)


def fsdp2_gloo_defect(group: Any = None, device: torch.device | str = "cpu") -> str | None:
    """A message when FSDP2's gradient reduction over ``group`` (``None``: the default group)
    for tensors on ``device`` would come out world_size times too large; else ``None``.

    That is when the group reduces those tensors with gloo, has more than one rank, and this
    torch's gloo reduce-scatter sums where it is asked to average
    (:func:`gloo_reduce_scatter_averages`; if that cannot be tested, torch < 2.9 is taken to
    have the defect). FSDP2 asks gloo for the average when it reduces fp32 or bf16 gradients
    (the default for fp32 parameters). No collective: each rank can call it on its own."""
    import torch.distributed as dist

    if not dist.is_available() or (group is None and not dist.is_initialized()):
        return None
    world = dist.get_world_size(group)
    if world <= 1 or not _gloo_serves(group, torch.device(device)) or _gloo_averages():
        return None
    return _gloo_sums(world)


def dtensor_defects(params: Iterable[torch.Tensor]) -> list[str]:
    """The messages of this module that concern the DTensor parameters among ``params`` (each
    message once; an empty list when none applies, or when no parameter is a DTensor).

    A DTensor does not say whether FSDP2 made it, so this is what FSDP2 would meet with such
    parameters: on CPU, :func:`cpu_fsdp2_stream_gap`; for each mesh dimension a parameter is
    sharded over (the groups FSDP2 reduce-scatters over; an HSDP mesh's replicate dimension is
    an all-reduce), :func:`fsdp2_gloo_defect` with that dimension's group
    (``param.device_mesh.get_group(dim)``). No collective."""
    out: list[str] = []
    seen: set[tuple[int, int, str]] = set()

    def add(msg: str | None) -> None:
        if msg is not None and msg not in out:
            out.append(msg)

    for p in params:
        if not is_dtensor(p):
            continue
        if p.device.type == "cpu":
            add(cpu_fsdp2_stream_gap())
        dt: Any = p  # a DTensor
        mesh = dt.device_mesh
        for dim, placement in enumerate(dt.placements):
            key = (id(mesh), dim, p.device.type)
            if not placement.is_shard() or key in seen:
                continue
            seen.add(key)
            add(fsdp2_gloo_defect(mesh.get_group(dim), p.device))
    return out
