"""The parameter shapes ``lars-npu bench`` (and the scripts in ``benchmarks/``) step: ResNet-50,
BERT-large and 10,000 tiny tensors, with seeded weights and gradients."""

from __future__ import annotations

from collections.abc import Callable

import torch

Shapes = list[tuple[str, tuple[int, ...]]]


def resnet50_shapes() -> Shapes:
    """ResNet-50 (He et al. 2016) parameter shapes: 161 tensors, 25,557,032 parameters."""
    shapes: Shapes = [("conv1.weight", (64, 3, 7, 7)), ("bn1.weight", (64,)), ("bn1.bias", (64,))]
    cin = 64
    for li, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)):
        cout = width * 4
        for b in range(blocks):
            pre = f"layer{li + 1}.{b}"
            convs = [(width, cin, 1, 1), (width, width, 3, 3), (cout, width, 1, 1)]
            for i, shape in enumerate(convs, start=1):
                shapes.append((f"{pre}.conv{i}.weight", shape))
                shapes += [(f"{pre}.bn{i}.weight", shape[:1]), (f"{pre}.bn{i}.bias", shape[:1])]
            if b == 0:
                shapes.append((f"{pre}.downsample.0.weight", (cout, cin, 1, 1)))
                shapes += [
                    (f"{pre}.downsample.1.weight", (cout,)),
                    (f"{pre}.downsample.1.bias", (cout,)),
                ]
            cin = cout
    return [*shapes, ("fc.weight", (1000, 2048)), ("fc.bias", (1000,))]


def bert_large_shapes() -> Shapes:
    """BERT-large (Devlin et al. 2019): 24 layers, hidden 1024, 391 tensors, ~335M parameters."""
    h, inter = 1024, 4096
    shapes: Shapes = [
        ("embeddings.word_embeddings.weight", (30522, h)),
        ("embeddings.position_embeddings.weight", (512, h)),
        ("embeddings.token_type_embeddings.weight", (2, h)),
        ("embeddings.LayerNorm.weight", (h,)),
        ("embeddings.LayerNorm.bias", (h,)),
    ]
    for i in range(24):
        pre = f"encoder.layer.{i}"
        dense = [
            *(f"attention.self.{m}" for m in ("query", "key", "value")),
            "attention.output.dense",
        ]
        for name in dense:
            shapes += [(f"{pre}.{name}.weight", (h, h)), (f"{pre}.{name}.bias", (h,))]
        shapes += [
            (f"{pre}.attention.output.LayerNorm.weight", (h,)),
            (f"{pre}.attention.output.LayerNorm.bias", (h,)),
            (f"{pre}.intermediate.dense.weight", (inter, h)),
            (f"{pre}.intermediate.dense.bias", (inter,)),
            (f"{pre}.output.dense.weight", (h, inter)),
            (f"{pre}.output.dense.bias", (h,)),
            (f"{pre}.output.LayerNorm.weight", (h,)),
            (f"{pre}.output.LayerNorm.bias", (h,)),
        ]
    return [*shapes, ("pooler.dense.weight", (h, h)), ("pooler.dense.bias", (h,))]


def tiny_shapes() -> Shapes:
    return [(f"t{i}.weight", (64,)) for i in range(10_000)]


SETS: dict[str, Callable[[], Shapes]] = {
    "resnet50": resnet50_shapes,
    "bert-large": bert_large_shapes,
    "tiny": tiny_shapes,
}


def make_params(shapes: Shapes, seed: int = 0) -> list[tuple[str, torch.nn.Parameter]]:
    """Named parameters with seeded weights (scale 0.05) and gradients (scale 1e-3)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name, shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.05)
        p.grad = torch.randn(shape, generator=gen) * 1e-3
        out.append((name, p))
    return out


def adapt_all(info: object) -> bool:
    """The benchmarks' LARS filter: adapt every tensor, as timm ``Lars`` does (so that every
    row does the same work)."""
    return True
