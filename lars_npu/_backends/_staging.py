"""Staging shared by the backends whose kernels take raw pointers of contiguous tensors (`cpu`,
`emu`): contiguous copies of views, momentum buffers in their parameter's dtype, and the write
back of those copies once a kernel has succeeded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .._fused import FusedCall


def has_lazy_bits(t: torch.Tensor) -> bool:
    """Whether ``t`` carries torch's negative or conjugate bit: its memory then holds the
    negated (conjugated) values, and a kernel reading raw memory would see the wrong sign."""
    return t.is_neg() or t.is_conj()


def resolved(t: torch.Tensor) -> torch.Tensor:
    """A copy of a tensor with the negative or conjugate bit whose memory holds its values."""
    return t.resolve_conj().resolve_neg()


def contig(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a contiguous tensor whose memory holds its values: the tensor itself when it is
    one, else a copy (views; the negative or conjugate bit resolved), written back by the
    ``unstage_*`` functions when a kernel wrote it."""
    if has_lazy_bits(t):
        return resolved(t).contiguous()
    return t if t.is_contiguous() else t.contiguous()


def ptrs(ts: Sequence[torch.Tensor | None]) -> np.ndarray:
    """int64 data pointers (0 for None)."""
    return np.fromiter(
        (0 if t is None else t.data_ptr() for t in ts), dtype=np.int64, count=len(ts)
    )


def stage_step(
    call: FusedCall,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None]]:
    """Contiguous parameters, gradients and momentum buffers for a fused step. A buffer is staged
    in its parameter's dtype (a model cast after its first step keeps torch SGD's old-dtype
    buffers); buffers of tensors without momentum are left out."""
    ws = [contig(p.detach()) for p in call.params]
    gs = [contig(g) for g in call.grads]
    ms = [
        None if (b is None or not h) else contig(b if b.dtype == w.dtype else b.to(w.dtype))
        for b, w, h in zip(call.bufs, ws, call.has_m, strict=True)
    ]
    return ws, gs, ms


def unstage_step(call: FusedCall, ws: list[torch.Tensor], ms: list[torch.Tensor | None]) -> None:
    """Copy staged parameters and buffers back where they were copies (casting buffers back)."""
    for p, w in zip(call.params, ws, strict=True):
        if w.data_ptr() != p.data_ptr() or w.stride() != p.stride():  # a staged copy
            p.detach().copy_(w)
    for b, m in zip(call.bufs, ms, strict=True):
        if b is not None and m is not None and m is not b:
            b.copy_(m)


def unstage_grads(
    grads: list[torch.Tensor], staged: list[torch.Tensor], adapt: list[bool] | None = None
) -> None:
    """Write rewritten gradients back into the views they were copied from (only those the
    kernel rewrote: ``adapt``, all when None; the others may not even be writable)."""
    for i, (g, c) in enumerate(zip(grads, staged, strict=True)):
        if c is not g and (adapt is None or adapt[i]):
            g.copy_(c)
