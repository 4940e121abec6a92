"""The per-tensor checks of a step, each raising a ``ValueError``/``TypeError`` that names the
tensor's role and parameter: a tensor LARS reads lies inside its storage, one it writes can be
written in place, a momentum buffer or other state entry fits its parameter, and no parameter is
a shard plain LARS would take a slice's norm of (``lars_npu._engines``). Used by the fused
driver's checked path, the unfused transaction and checkpoint loads."""

from __future__ import annotations

import math
from typing import Any, cast

import torch

from ._engines import is_dtensor, refusal, shard_kind
from .functional import SUPPORTED_DTYPES, sparse_values


def refuse_shard(p: torch.Tensor, name: str) -> None:
    """Plain LARS never takes a norm from a shard (``lars_npu._engines``)."""
    kind = shard_kind(p)
    if kind is not None:
        raise ValueError(f"LARS: {refusal(kind, name)}")


def check_storage(t: torch.Tensor, label: str) -> None:
    """The elements ``t`` addresses lie inside its storage (a storage resized under a tensor,
    e.g. freed by ``untyped_storage().resize_(0)``, is refused)."""
    n = t.numel()
    if n == 0:
        return
    if t.data_ptr() == 0:
        raise ValueError(
            f"{label} has no memory (a meta tensor or a ZeroTensor); LARS needs real values"
        )
    if t.is_contiguous():  # the common case, without a Python loop over dimensions
        need = (t.storage_offset() + n) * t.element_size()
        if t.untyped_storage().nbytes() >= need:
            return
    stride = t.stride()
    last = t.storage_offset() + sum((d - 1) * st for d, st in zip(t.shape, stride, strict=True))
    need = (last + 1) * t.element_size()
    if min(stride, default=0) < 0 or t.untyped_storage().nbytes() < need:
        raise ValueError(
            f"{label}: its storage holds {t.untyped_storage().nbytes()} bytes, fewer than the "
            f"{need} its shape {tuple(t.shape)} addresses (storage freed or resized?)"
        )


def check_written(t: torch.Tensor, label: str) -> None:
    """A tensor LARS writes in place: inside its storage, no element stored twice, and not an
    inference tensor (those cannot be written in place outside torch.inference_mode())."""
    check_storage(t, label)
    if t.is_inference():
        raise ValueError(
            f"{label} is an inference tensor (made under torch.inference_mode()); it cannot be "
            "written in place outside inference mode: clone it outside"
        )
    # an element stored twice: a dimension of several elements with stride 0 (what torch's
    # in-place ops refuse as internal overlap)
    if any(s == 0 and n > 1 for n, s in zip(t.shape, t.stride(), strict=True)):
        raise ValueError(
            f"{label} has overlapping elements (e.g. from expand()); it cannot be written in place"
        )


def check_buffer(p: torch.Tensor, b: Any, name: str) -> None:
    """A momentum buffer that can belong to parameter ``p``."""
    if not isinstance(b, torch.Tensor):
        raise TypeError(
            f"momentum_buffer of parameter {name!r} must be a tensor, got {type(b).__name__}"
        )
    if b.shape != p.shape:
        raise ValueError(
            f"momentum_buffer of parameter {name!r} has shape {tuple(b.shape)}, the "
            f"parameter {tuple(p.shape)}"
        )
    if b.device != p.device:
        raise ValueError(f"momentum_buffer of parameter {name!r} is on {b.device}")
    if b.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"momentum_buffer of parameter {name!r} has dtype {b.dtype}; supported: float32, "
            "float16, bfloat16, float64"
        )
    if b.layout != torch.strided:  # torch SGD keeps a sparse buffer only for sparse gradients
        raise ValueError(
            f"momentum_buffer of parameter {name!r} is sparse ({b.layout}) but its gradient is "
            "dense (a checkpoint of a model with sparse gradients?): torch's SGD cannot add them"
        )
    check_written(b, f"momentum_buffer of parameter {name!r}")


MOMENTUM = "momentum_buffer"  # torch SGD's state key, the one state entry the fused step uses


def check_state_entry(
    key: str, v: Any, p: torch.Tensor, name: str, *, finite: bool, loaded: bool = False
) -> None:
    """One entry of a parameter's optimizer state, as the inner optimizer will read it: SGD's
    ``momentum_buffer`` is None or a tensor of a supported floating dtype and the parameter's
    shape (0-dim only for a 0-dim parameter); any other tensor of several elements has the
    parameter's shape (one-element ones are counters or scalars, such as ``step``). With
    ``finite`` (checkpoint loads), floating tensors (sparse ones by their values) and Python
    floats must hold no inf/nan, judged in the parameter's dtype, which torch's load casts
    floating state to (all but ``step``). (Per-step paths add the storage checks.)"""
    what = f"{'loaded ' if loaded else ''}state[{key!r}] of parameter {name!r}"
    misfit = "; this checkpoint does not fit the model" if loaded else ""
    if key == MOMENTUM and v is not None:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{what} must be a tensor or None, got {type(v).__name__}{misfit}")
        if v.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"{what} has dtype {v.dtype}; supported: float32, float16, bfloat16, "
                f"float64{misfit}"
            )
    if (
        isinstance(v, torch.Tensor)
        and (key == MOMENTUM or (v.dim() > 0 and v.numel() != 1))
        and v.shape != p.shape
    ):
        raise ValueError(
            f"{what} has shape {tuple(v.shape)}, the parameter {tuple(p.shape)}{misfit}"
        )
    if not finite:
        return
    if isinstance(v, torch.Tensor):
        # this rank's elements: no collective here
        t = cast(Any, v).to_local() if is_dtensor(v) else v
        if t.layout != torch.strided:
            t = sparse_values(t)
        if not (t.is_floating_point() or t.is_complex()):
            return
        if key != "step" and p.is_floating_point() and t.is_floating_point():
            t = t.to(p.dtype)  # what the load will hold: finite in fp64 may be inf in fp16
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what} holds inf/nan (in the parameter's dtype, {p.dtype})")
    elif isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{what} is {v}")
