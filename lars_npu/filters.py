"""Which parameters LARS adapts. A filter gets a :class:`ParamInfo` and returns True to adapt."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ParamInfo", "default_lars_filter", "exclude_bias_and_norm"]


@dataclass(frozen=True)
class ParamInfo:
    """What a filter sees of one parameter. ``name`` is '' when the optimizer has no names."""

    name: str
    tensor: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape

    @property
    def ndim(self) -> int:
        return self.tensor.ndim

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.dtype


def default_lars_filter(x: ParamInfo) -> bool:
    """MindSpore's default: adapt unless the name contains ``"LayerNorm"`` or ``"bias"``.

    Torch names normalisation weights ``bn1.weight`` / ``norm.weight``, which this does not catch;
    for torch models prefer :func:`exclude_bias_and_norm`.
    """
    return "LayerNorm" not in x.name and "bias" not in x.name


def exclude_bias_and_norm(x: ParamInfo) -> bool:
    """For torch models: skip biases and every parameter with ndim <= 1 (BatchNorm/LayerNorm
    affine weights, biases, scalars). Needs no names."""
    return x.ndim > 1 and "bias" not in x.name
