"""LARS across processes (docs/distributed.md): data parallel as is; sharded parameters, one
all-reduce.

Data parallel (``DistributedDataParallel``): use :class:`lars_npu.LARS` unchanged. DDP averages the
gradients before ``step``, so every rank holds the full gradient and computes the same λ.

Sharded parameters (ZeRO-style flat shards, DTensor, FSDP2 ``fully_shard``): each rank holds a
piece of every parameter, so a rank alone cannot compute the per-layer norms. :class:`ShardedLARS`
computes the local Σw² and Σg² of every parameter, packs them into ONE flat fp32 tensor of 2·N
values (N parameters), sums it over the process group with ONE ``all_reduce``, and then applies
LARS to the local shards with the global sums: the same λ as single-process LARS on the full
tensors, the same ``g' = λ·(g + wd·w)`` and the same inner-optimizer step. On the ``cpu`` backend
the local sums and the gradient rewrite are one native call each over all parameters, on the
AscendC kernels (``npu``, ``emu``) one launch each; other backends (and the kernels with mixed
dtypes) are called once per tensor (see :class:`ShardedLARS`).

A plain tensor must say which part of which parameter it is: make flat shards with
:func:`flat_shard`, or record the global shape of shards made elsewhere with
:func:`mark_flat_shard`. DTensor parameters (what ``fully_shard`` creates) describe themselves.

:func:`run_and_exit` ends a rank's process without racing the interpreter's teardown (gloo's worker
threads can abort it at exit: "terminate called without an active exception").
"""

from __future__ import annotations

from .exiting import run_and_exit
from .optimizer import ShardedLARS
from .shards import ShardInfo, flat_shard, global_shape, mark_flat_shard, mark_fsdp1

__all__ = [
    "ShardInfo",
    "ShardedLARS",
    "flat_shard",
    "global_shape",
    "mark_flat_shard",
    "mark_fsdp1",
    "run_and_exit",
]
