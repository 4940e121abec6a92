"""lars_npu: LARS (layer-wise adaptive rate scaling) for PyTorch, MindSpore ``nn.LARS`` semantics.

    inner = torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)
    opt = lars_npu.LARS(inner, epsilon=1e-5, coefficient=0.001, use_clip=False)

Backends: fused C++ kernels on CPU (``lars_npu._C``), plain torch ops on other devices, and the
NumPy reference (:mod:`lars_npu.reference`, the spec in code) everywhere. ``LARS`` built on
sharded parameters (DTensor from FSDP2 ``fully_shard``, flat shards marked with their global shape,
FSDP1 after :func:`lars_npu.distributed.mark_fsdp1`) sums the norms across the ranks: see
:mod:`lars_npu.distributed` (loaded on first use). ``LARSSGD(params, lr, ...)`` is
``LARS(SGD(params, ...))`` for code that builds optimizers from a class and kwargs.
"""

import importlib
import warnings
from typing import Any

from ._upstream import torch_floor_error

if (_floor := torch_floor_error()) is not None:  # LARS(...) refuses; the import says why first
    warnings.warn(_floor, RuntimeWarning, stacklevel=2)

from . import reference
from ._backends import BackendUnavailableError, available_backends
from ._ops import TensorError, TensorRefusal, TensorTypeError
from ._version import __version__
from .filters import ParamInfo, default_lars_filter, exclude_bias_and_norm
from .functional import lars_update, square_sum_all
from .larssgd import LARSSGD
from .optim import LARS

__all__ = [
    "LARS",
    "LARSSGD",
    "BackendUnavailableError",
    "ParamInfo",
    "ShardedLARS",
    "TensorError",
    "TensorRefusal",
    "TensorTypeError",
    "__version__",
    "available_backends",
    "default_lars_filter",
    "exclude_bias_and_norm",
    "lars_update",
    "reference",
    "square_sum_all",
]


def __getattr__(name: str) -> Any:
    # lars_npu.distributed is imported on first use, so `import lars_npu` stays light.
    if name in ("ShardedLARS", "distributed"):
        distributed = importlib.import_module(f"{__name__}.distributed")
        return distributed if name == "distributed" else distributed.ShardedLARS
    raise AttributeError(f"module 'lars_npu' has no attribute {name!r}")
