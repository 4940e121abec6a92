"""Which distributed engine made a parameter a shard (docs/distributed.md, "no silent wrong λ").

Plain :class:`lars_npu.LARS` never computes a norm from a shard. A parameter is looked at here
before any write, and falls in one of these kinds:

- ``None``: a full tensor (also under DDP, ``ZeroRedundancyOptimizer`` and DeepSpeed ZeRO 0,
  which give the optimizer whole tensors);
- ``"dtensor"``: a DTensor (FSDP2 ``fully_shard``, tensor parallel): handled by the sharded path;
- ``"flat"``: a flat shard whose global shape is recorded (``lars_npu.distributed.flat_shard``,
  ``mark_flat_shard``, ``mark_fsdp1``): handled by the sharded path;
- ``"fsdp1_flat"``: an FSDP1 ``FlatParameter`` (``use_orig_params=False``): refused, with the
  recipe;
- ``"fsdp1_orig"``: a parameter FSDP1 manages with ``use_orig_params=True`` and nobody marked:
  refused, with the recipe (``mark_fsdp1``);
- ``"zero3"``: a DeepSpeed ZeRO-3 partitioned parameter: refused;
- ``"zero12"``: a DeepSpeed ZeRO 1/2 model parameter (it carries ``_hp_mapping``, set on every
  parameter of the engine, None where this rank holds none of it): its optimizer sees flat
  partitions, refused.

Nothing here imports torch.distributed or DeepSpeed: a tensor can only be one of theirs once the
module that makes it is loaded.
"""

from __future__ import annotations

import sys

import torch

from ._compat import flat_parameter_type, fsdp1_managed

# Attribute that records the global (unsharded) shape on a flat shard.
GLOBAL_SHAPE_ATTR = "_lars_global_shape"

HANDLED = ("dtensor", "flat")

_MARK = (
    "call lars_npu.distributed.mark_fsdp1(fsdp_model) before building the optimizer (it "
    "records each parameter's full shape; LARS then sums the norms over the ranks with one "
    "all-reduce per step), or use FSDP2 (torch.distributed.fsdp.fully_shard), whose DTensor "
    "parameters LARS handles as they are"
)
_FSDP1_RECIPE = "wrap with FullyShardedDataParallel(..., use_orig_params=True), then " + _MARK
_ZERO_RECIPE = (
    "use DeepSpeed ZeRO stage 0 (plain data parallel: LARS is exact there), or torch's "
    "ZeroRedundancyOptimizer(params, optimizer_class=lars_npu.LARSSGD, ...), which shards whole "
    "parameters, or FSDP2 (fully_shard)"
)


def dtensor_type() -> type | None:
    # Never import DTensor (0.7 s) just to ask: no tensor can be one until its module is loaded.
    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None) if mod is not None else None


def is_dtensor(t: object) -> bool:
    cls = dtensor_type()
    return cls is not None and isinstance(t, cls)


def shard_kind(p: torch.Tensor) -> str | None:
    """The kind of ``p`` (see the module doc); ``None`` for a full tensor."""
    if is_dtensor(p):
        return "dtensor"
    if getattr(p, GLOBAL_SHAPE_ATTR, None) is not None:
        return "flat"
    flat = flat_parameter_type()
    if flat is not None and isinstance(p, flat):
        return "fsdp1_flat"
    if fsdp1_managed(p):
        return "fsdp1_orig"
    if hasattr(p, "ds_id") or hasattr(p, "ds_status"):
        return "zero3"
    if hasattr(p, "_hp_mapping"):  # DeepSpeed links every model parameter (None: not here)
        return "zero12"
    return None


def refusal(kind: str, name: str) -> str:
    """Why plain LARS refuses a parameter of ``kind``, and what works instead."""
    if kind == "fsdp1_flat":
        return (
            f"parameter {name!r} is an FSDP1 FlatParameter (FullyShardedDataParallel with "
            "use_orig_params=False): one flat slice of many layers' weights, so no layer's norm "
            f"can be taken from it; {_FSDP1_RECIPE}"
        )
    if kind == "fsdp1_orig":
        return (
            f"parameter {name!r} is managed by FSDP1 (FullyShardedDataParallel, "
            "use_orig_params=True): each rank holds a flat slice of it, so its norms would be a "
            f"slice's; {_MARK}"
        )
    if kind == "zero3":
        return (
            f"parameter {name!r} is partitioned by DeepSpeed ZeRO stage 3: each rank holds a "
            f"slice of it, so its norms would be a slice's; {_ZERO_RECIPE}"
        )
    if kind == "zero12":
        return (
            f"parameter {name!r} belongs to a DeepSpeed ZeRO stage 1/2 engine, which steps the "
            "optimizer on flat fp32 partitions (slices of several layers), so no layer's norm "
            f"can be taken from them; {_ZERO_RECIPE}"
        )
    if kind in HANDLED:
        return (
            f"parameter {name!r} is a shard ({kind}), but this optimizer was built for whole "
            "tensors (the parameters became shards after it was built, e.g. by fully_shard or by "
            "accelerate's FSDP2 preparing it with the model): build "
            "lars_npu.LARS(torch.optim.SGD(params, ...)) on the sharded parameters, after "
            "sharding the model; it then sums the norms over the ranks"
        )
    raise ValueError(f"unknown shard kind {kind!r}")
