"""What LARS accepts, checked once at construction: the inner optimizer (momentum SGD is the
intended partner; optimizers λ cancels in, or that re-evaluate the closure, are refused or warned
about) and LARS's own arguments."""

from __future__ import annotations

import warnings

from torch.optim import Optimizer

from ._backends import get_backend
from ._fused import FUSED_REQUIREMENTS, unsupported_reason
from ._groups import FILTERS, LarsFilter

# Optimizers that evaluate the closure several times per step: LARS rescales one gradient per step.
_CLOSURE_REEVALUATING = ("LBFGS",)
# Scale-invariant (or nearly so) updates: λ largely cancels in them.
_SCALE_INVARIANT = ("RMSprop", "Adagrad", "Adadelta", "Rprop", "Adafactor")

_ZERO_RECIPE = (
    "LARS can not wrap a ZeroRedundancyOptimizer: it steps only this rank's share of the "
    "parameters through an optimizer of its own. Put LARS inside it instead: "
    "ZeroRedundancyOptimizer(model.parameters(), optimizer_class=lars_npu.LARSSGD, lr=..., "
    "momentum=..., weight_decay=..., lars_filter='exclude_bias_and_norm') (ZeRO shards whole "
    "parameters, so every norm is a full tensor's)"
)


def _refused_family(optimizer: Optimizer) -> str | None:
    for cls in type(optimizer).__mro__:
        if cls in (Optimizer, object):
            continue
        low = cls.__name__.lower()
        if "adam" in low or ("lamb" in low and "lambda" not in low):
            return cls.__name__
    return None


def check_inner(optimizer: object, wrapper: type) -> Optimizer:
    """The inner optimizer, or a TypeError saying what to use instead (a warning for the
    scale-invariant ones, which run but gain little)."""
    if isinstance(optimizer, wrapper):
        raise TypeError("optimizer is already a LARS; wrap the inner optimizer once")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}: LARS "
            "wraps an optimizer, which holds the parameters and their lr "
            "(lars_npu.LARS(torch.optim.SGD(params, lr=...))); to build it from parameters and "
            "keyword arguments (ZeroRedundancyOptimizer(params, optimizer_class=...), optimizer "
            "factories) use lars_npu.LARSSGD"
        )
    refused = _refused_family(optimizer)
    if refused is not None:
        raise TypeError(
            f"LARS can not be used with {refused} (optimizer): Adam/LAMB-family updates are "
            "invariant to the gradient's scale, so the layer-wise trust ratio would cancel; "
            "use momentum SGD as the inner optimizer"
        )
    names = {cls.__name__ for cls in type(optimizer).__mro__}
    if "ZeroRedundancyOptimizer" in names:
        raise TypeError(_ZERO_RECIPE)
    for name in _CLOSURE_REEVALUATING:
        if name in names:
            raise TypeError(
                f"LARS can not be used with {name} (optimizer): it re-evaluates the closure "
                "several times per step, while LARS rescales one gradient per step; use "
                "momentum SGD as the inner optimizer"
            )
    for name in _SCALE_INVARIANT:
        if name in names:
            warnings.warn(
                f"LARS around {name}: its update divides by a running scale of the gradient, "
                "so the layer-wise trust ratio λ largely cancels; LARS is meant for momentum "
                "SGD (torch.optim.SGD)",
                UserWarning,
                stacklevel=4,
            )
            break
    return optimizer


def check_filter(lars_filter: object) -> LarsFilter:
    """A filter function, or one by name (names keep functions out of checkpoints: ZeRO's)."""
    if isinstance(lars_filter, str):
        if lars_filter not in FILTERS:
            raise ValueError(
                f"lars_filter {lars_filter!r} is not a known filter name; known: "
                f"{sorted(FILTERS)} (or pass a callable)"
            )
        return FILTERS[lars_filter]
    if not callable(lars_filter):
        raise TypeError(
            "lars_filter must be callable (ParamInfo -> bool) or a filter name, got "
            f"{type(lars_filter).__name__}"
        )
    return lars_filter


def check_backend(backend: object) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend != "auto":
        get_backend(backend)  # unknown or unavailable: a clear error now, not at step time
    return backend


def check_fused(fused: object, optimizer: Optimizer, sharded: bool) -> bool | None:
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"fused must be None, True or False, got {type(fused).__name__}")
    if fused and sharded:
        raise ValueError(
            "fused=True: sharded parameters always take the rewrite + inner step path (the "
            "norms need the all-reduce first); use fused=None or False"
        )
    if fused:
        why = unsupported_reason(optimizer)
        if why is not None:
            raise ValueError(f"fused=True needs {FUSED_REQUIREMENTS}, but {why}")
    return fused
