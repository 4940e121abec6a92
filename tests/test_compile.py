"""torch.compile(opt.step): the fused step is one torch.ops.lars_npu.fused_step_ node, with no
graph break, bit for bit the eager step (a skipped, non-finite step included)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn

import lars_npu

from .conftest import needs_native

pytestmark = needs_native


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResNetLike(nn.Module):
    """A stem, two residual blocks (conv + BatchNorm) and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer = nn.Sequential(Block(8), Block(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer(torch.relu(self.stem(x))).mean((2, 3)))


def make(model: nn.Module, **kw) -> lars_npu.LARS:
    sgd = torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4,
                          nesterov=kw.pop("nesterov", False))  # fmt: skip
    return lars_npu.LARS(sgd, lars_filter=lars_npu.exclude_bias_and_norm, **kw)


def backward(model: nn.Module, t: int, poison: bool) -> None:
    gen = torch.Generator().manual_seed(t)
    x = torch.randn(4, 3, 8, 8, generator=gen)
    y = torch.randint(0, 10, (4,), generator=gen)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    if poison:
        model.fc.weight.grad[0, 0] = float("inf")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("nesterov", [False, True])
def test_compiled_step_is_the_eager_step_bit_for_bit(nesterov):
    torch.manual_seed(0)
    eager_model = ResNetLike()
    compiled_model = copy.deepcopy(eager_model)
    eager = make(eager_model, nesterov=nesterov)
    compiled = make(compiled_model, nesterov=nesterov)
    step = torch.compile(compiled.step)
    for t in range(5):
        skip = t == 2  # a non-finite gradient: the whole step is skipped
        backward(eager_model, t, skip)
        backward(compiled_model, t, skip)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the skip warning
            eager.step()
            step()
            assert bool(compiled.found_inf) == bool(eager.found_inf) == skip
        for a, b in zip(eager_model.parameters(), compiled_model.parameters(), strict=True):
            assert torch.equal(a, b)
            assert torch.equal(eager.state[a]["momentum_buffer"],
                               compiled.state[b]["momentum_buffer"])  # fmt: skip
        if not skip:
            assert compiled.trust_ratios() == eager.trust_ratios()


def test_compiled_step_is_one_operator_node_without_graph_breaks():
    torch.manual_seed(0)
    model = ResNetLike()
    opt = make(model)
    backward(model, 0, False)
    explained = torch._dynamo.explain(opt.step)()
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained
    calls = [
        node
        for graph in explained.graphs
        for node in graph.graph.nodes
        if node.op == "call_function" and "lars_npu" in str(node.target)
    ]
    assert len(calls) == 1 and "fused_step_" in str(calls[0].target)


def test_a_step_the_operator_does_not_cover_runs_eagerly_under_compile():
    """fused=False (and sharded, ZeRO, non-SGD inner optimizers): the eager step, outside the
    graph, with the eager step's results."""
    torch.manual_seed(0)
    eager_model = ResNetLike()
    compiled_model = copy.deepcopy(eager_model)
    eager = make(eager_model, fused=False)
    compiled = make(compiled_model, fused=False)
    step = torch.compile(compiled.step)
    for t in range(3):
        backward(eager_model, t, False)
        backward(compiled_model, t, False)
        eager.step()
        step()
    for a, b in zip(eager_model.parameters(), compiled_model.parameters(), strict=True):
        assert torch.equal(a, b)
