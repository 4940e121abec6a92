"""``lars_npu.LARSSGD``: ``LARS(torch.optim.SGD(...))`` from parameters and keyword arguments."""

from __future__ import annotations

from typing import Any

import torch

from .filters import default_lars_filter
from .optim import LARS, LarsFilter

__all__ = ["LARSSGD"]


class LARSSGD(LARS):
    """``LARS(torch.optim.SGD(params, ...))`` built torch-style from ``params`` and keyword
    arguments, for code that makes optimizers from a class and kwargs
    (``ZeroRedundancyOptimizer(params, optimizer_class=LARSSGD, lr=...)``, timm's, Lightning's
    and Hugging Face's factories, Hydra configs). Same step, same ``state_dict`` as
    ``LARS(SGD(...))``; ``self.optimizer`` is the inner SGD.

    Args:
        params: parameters or param groups, as for ``torch.optim.SGD``; pass
            ``model.named_parameters()`` so that the default ``lars_filter`` sees names.
        lr, momentum, dampening, weight_decay, nesterov: the inner SGD's (``weight_decay`` is
            applied by LARS: see :class:`LARS`).
        epsilon, coefficient, use_clip, lars_filter, guard_zero_norm, backend, fused: LARS's.
        foreach: the inner SGD's, for its unfused steps.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        epsilon: float = 1e-5,
        coefficient: float = 0.001,
        use_clip: bool = False,
        lars_filter: LarsFilter | str = default_lars_filter,
        guard_zero_norm: bool = False,
        backend: str = "auto",
        fused: bool | None = None,
        foreach: bool | None = None,
    ) -> None:
        inner = torch.optim.SGD(
            params,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            foreach=foreach,
        )
        super().__init__(
            inner,
            epsilon,
            coefficient,
            use_clip,
            lars_filter,
            guard_zero_norm=guard_zero_norm,
            backend=backend,
            fused=fused,
        )
